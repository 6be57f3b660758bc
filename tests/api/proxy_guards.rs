//! What a proxy caller cannot make hlgate do upstream: spend a tenant's refresh token on 401s
//! that no new token cures, or send HighLevel an empty `Version`.

use crate::helpers::*;
use crate::proxy::{expiring, get, installed, proxied};

const NO_SCOPE: &str = "The token is not authorized for this scope.";

#[tokio::test]
async fn a_401_no_new_token_cures_costs_one_refresh_however_often_it_is_asked() {
    let (standin, app) = installed(&[], &["loc-a"]).await;
    for i in 0..20 {
        let (status, body) = json(get(&app, "loc-a", "/out-of-scope").await).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (401, Some(NO_SCOPE)),
            "call {i}"
        );
    }
    // The first call refreshed once and tried again; the other 19 were held.
    assert_eq!(
        standin.with(|s| s.refresh_calls),
        1,
        "refresh token rotated"
    );
    assert_eq!(standin.with(|s| s.api.calls("/out-of-scope")), 21);
    let metrics = app.metrics_text().await;
    let count = |outcome: &str| {
        metric(
            &metrics,
            &format!("hlgate_api_requests_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!((count("refreshed_401"), count("held_401")), (1.0, 19.0));
    // The tenant's tokens still serve what they have the scope for.
    assert_eq!(get(&app, "loc-a", "/contacts/c1").await.status(), 200);
    assert_eq!(standin.with(|s| s.reused_refresh_tokens), 0);
}

#[tokio::test]
async fn a_401_for_a_token_renewed_just_now_is_passed_on_without_another_refresh() {
    let (standin, app) = expiring(&["loc-a"]).await;
    let before = standin.with(|s| s.refresh_calls);
    // The token is renewed before the call (it expires too soon); HighLevel refuses the new one.
    let (status, body) = json(get(&app, "loc-a", "/out-of-scope").await).await;
    assert_eq!((status, body["message"].as_str()), (401, Some(NO_SCOPE)));
    assert_eq!(
        standin.with(|s| s.refresh_calls),
        before + 1,
        "a token renewed just now was refreshed again after its 401"
    );
    assert_eq!(standin.with(|s| s.api.calls("/out-of-scope")), 1);
}

#[tokio::test]
async fn an_empty_version_is_replaced_by_the_default_one() {
    let (standin, app) = installed(&[], &["loc-a"]).await;
    for version in ["", " ", "\t "] {
        for _ in 0..3 {
            let r = app
                .http
                .get(proxied(&app, "loc-a", "/contacts/c1"))
                .header("Version", version)
                .send()
                .await
                .unwrap();
            let (status, body) = json(r).await;
            assert_eq!(status, 200, "Version {version:?}: {body}");
            assert_eq!(body["version"], "2021-07-28", "Version {version:?}");
        }
    }
    assert_eq!(standin.with(|s| s.api.unauthorized), 0);
    assert_eq!(
        standin.with(|s| s.refresh_calls),
        0,
        "refresh token rotated"
    );
}
