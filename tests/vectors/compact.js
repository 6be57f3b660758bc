// Writes compact.json: for each input, what `JSON.stringify(JSON.parse(input))` gives in
// Node (null when JSON.parse throws). HighLevel's examples sign that form, so hlgate's
// signature fallback must reproduce it byte for byte.
//
// Run from the repository root: node tests/vectors/compact.js
'use strict';
const fs = require('fs');
const path = require('path');

const cases = [
  // Numbers as JavaScript prints doubles.
  ['integral doubles', String.raw`[1.0, 1e3, 1E+2, 100.000, 0.0]`],
  ['negative zero', String.raw`[-0, -0.0, -0e5]`],
  ['exponent thresholds', String.raw`[1e20, 1e21, 123456789e13, 1e-6, 1e-7, 0.000001234, 1.5e-7]`],
  ['big integers round to doubles', String.raw`[9007199254740993, 123456789012345678901234567890, -18446744073709551617]`],
  ['shortest round trip', String.raw`[0.1, 0.3, 2.5e-5, 4.35, 1.7976931348623157e308, 5e-324, 2.2250738585072014e-308]`],
  ['overflow is Infinity, printed null', String.raw`[1e400, -1e400, 1e-400]`],
  ['a number at the top level', String.raw` 1.50 `],
  // Key order: array indices first, ascending; then the rest in insertion order.
  ['integer-like keys first', String.raw`{"b":1,"2":2,"a":3,"1":4,"10":5,"0":6}`],
  ['only canonical array indices move', String.raw`{"z":0,"01":1,"-1":2,"1.5":3,"4294967294":4,"4294967295":5,"1e3":6," 1":7,"7":8}`],
  ['nested objects reorder too', String.raw`{"x":{"b":[{"3":"c","a":1,"1":"b"}],"0":null}}`],
  // Duplicate keys: the last value wins, at the first key's position.
  ['duplicate keys', String.raw`{"a":1,"b":2,"a":3}`],
  ['duplicate keys spelled differently', String.raw`{"a":1,"\u0061":2,"b":{"c":1,"c":{"d":2}}}`],
  ['duplicate integer keys', String.raw`{"1":"first","x":0,"1":"last"}`],
  ['__proto__ is an own key', String.raw`{"__proto__":1,"a":2}`],
  // Strings re-escaped the way JSON.stringify does.
  ['unicode escapes of printable characters', String.raw`"\u0041\u00e9\u00E9\u4e2d"`],
  ['escaped solidus', String.raw`"a\/b"`],
  ['short escapes', String.raw`"\b\f\n\r\t\"\\"`],
  ['control characters', String.raw`"\u0000\u0001\u001F\u000b\u007f\u0080"`],
  ['raw non-ASCII stays raw', `"é中😀\u2028\u2029\ufeff"`],
  ['line and paragraph separators', String.raw`"\u2028\u2029"`],
  ['a surrogate pair becomes the character', String.raw`"\uD83D\uDE00"`],
  ['a lone high surrogate', String.raw`"\ud800"`],
  ['a lone low surrogate', String.raw`"\uDC00x"`],
  ['a high surrogate before a non-surrogate', String.raw`"\uD83D\u0041"`],
  ['two high surrogates then a low', String.raw`"\ud83d\ud83d\ude00"`],
  ['a reversed pair', String.raw`"\ude00\ud83d"`],
  ['a lone surrogate in a key', String.raw`{"\udbff":"\udfff"}`],
  // Whitespace and structure.
  ['pretty-printed', '{\n\t"type" : "ContactCreate" ,\r\n  "tags" : [ "a" , "b" ] ,\n  "empty" : { } , "none" : [ ]\n}\n'],
  ['literals', String.raw` [ true , false , null ] `],
  ['a string at the top level', String.raw`"x"`],
  // Not JSON: JSON.parse throws.
  ['trailing comma in an object', String.raw`{"a":1,}`],
  ['trailing comma in an array', String.raw`[1,]`],
  ['leading zero', String.raw`01`],
  ['plus sign', String.raw`+1`],
  ['bare fraction', String.raw`.5`],
  ['missing fraction digits', String.raw`1.`],
  ['missing exponent digits', String.raw`1e`],
  ['NaN', String.raw`NaN`],
  ['single quotes', String.raw`{'a':1}`],
  ['unknown escape', String.raw`"\x41"`],
  ['short unicode escape', String.raw`"\u12"`],
  ['raw control character in a string', '"a\tb"'],
  ['missing colon', String.raw`{"a" 1}`],
  ['empty body', ''],
  ['two values', String.raw`1 2`],
  ['trailing garbage', String.raw`{"a":1}}`],
  ['truncated literal', String.raw`tru`],
  ['non-string key', String.raw`{1:2}`],
  ['vertical tab is not whitespace', '\u000b{}'],
];

function compact(input) {
  try {
    return JSON.stringify(JSON.parse(input));
  } catch (e) {
    return null;
  }
}

const vectors = cases.map(([name, input]) => ({ name, input, compact: compact(input) }));

// HighLevel's documented examples, which are pretty-printed already. The test also feeds
// each one re-indented (every newline replaced by "\r\n\t"), which must give the same.
const dir = path.join(__dirname, '..', 'fixtures', 'highlevel');
const fixtures = fs
  .readdirSync(dir)
  .filter((f) => f.endsWith('.json'))
  .sort()
  .map((fixture) => {
    const text = fs.readFileSync(path.join(dir, fixture), 'utf8');
    const reindented = text.split('\n').join('\r\n\t');
    const expected = compact(text);
    if (compact(reindented) !== expected) throw new Error(`${fixture}: re-indenting changed it`);
    return { fixture, compact: expected };
  });

fs.writeFileSync(
  path.join(__dirname, 'compact.json'),
  JSON.stringify({ node: process.version, vectors, fixtures }, null, 1) + '\n',
);
