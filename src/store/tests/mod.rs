//! The store through its handle, one topic a file.

pub(super) mod kit;

mod arrays;
mod damage;
mod faults;
mod logged;
mod lookup;
mod model;
mod outbox;
mod replay;
mod sweep;
