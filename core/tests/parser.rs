//! The borrowed reader of usage events against the full (serde_json) parser: on generated
//! payloads, valid and invalid, `event::parse` (the borrowed reader where it takes the
//! payload, the full parser otherwise) must give exactly what `event::parse_reference`
//! gives: the same event, or the same rejection with the same reason.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use tally_core::event::borrowed;
use tally_core::event::{parse, parse_reference};

fn arrival() -> DateTime<Utc> {
    "2026-11-20T09:15:05Z".parse().expect("a time")
}

/// JSON texts of a name: valid ones, escaped ones, and each way a name is refused.
fn name(valid: &'static [&'static str]) -> impl Strategy<Value = String> {
    let long = format!("\"{}\"", "n".repeat(257));
    let exact = format!("\"{}\"", "n".repeat(256));
    let mut texts: Vec<String> = valid.iter().map(|v| format!("\"{v}\"")).collect();
    texts.extend(
        [
            "\"\"",
            "\"   \"",
            "\" x\"",
            "\"\\t\"",
            "\"\u{3000}\"",
            "\"\u{3000}x\"",
            "null",
            "7",
            "\"k\\u00e9\"",
            "\"\\ud83d\\ude00\"",
            "\"\\ud83d\"",
            "\"\\udc00x\"",
            "\"a\\\"b\\\\c\\/d\"",
            "\"a\\nb\"",
            "\"e\\u0085\"",
            "\"\u{85}\"",
            "\"\u{7f}\"",
            "\"김\"",
            "\"abcdefgh\u{7f}\"",
            "\"abcdefghijklmno\u{85}xyz\"",
            "\"\u{a0}abcdefghij\"",
            "\"abcdefghijklmnop\u{a0}\"",
            "\"abcdefgh\u{c2}\"",
            "\"abcdefghijklmnopq\\u0085\"",
            "\"a\\x\"",
            "{\"a\":1}",
        ]
        .map(String::from),
    );
    texts.push(long);
    texts.push(exact);
    let valid: Vec<String> = valid.iter().map(|v| format!("\"{v}\"")).collect();
    prop_oneof![
        6 => prop::sample::select(valid),
        1 => prop::sample::select(texts),
    ]
}

/// One of `texts`, mostly the first (a valid one).
fn one_of(texts: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(texts[0].to_string()),
        1 => prop::sample::select(texts).prop_map(String::from),
    ]
}

/// `"key":value`, or nothing.
fn field(
    key: &'static str,
    value: impl Strategy<Value = String> + 'static,
) -> BoxedStrategy<Vec<String>> {
    prop_oneof![
        8 => (value, 0..8u8).prop_map(move |(v, spacing)| {
            // Now and then whitespace around the colon, as JSON allows.
            let colon = match spacing {
                0 => " :\t",
                1 => ":\n ",
                _ => ":",
            };
            vec![format!("\"{key}\"{colon}{v}")]
        }),
        1 => Just(Vec::new()),
    ]
    .boxed()
}

fn data() -> impl Strategy<Value = String> {
    let fields = (
        field("user", name(&["kim@acme.kr", "user-1"])),
        field(
            "feature",
            one_of(&[
                "\"image_generation\"",
                "\"erase\"",
                "\"translation\"",
                "\"\"",
                "null",
                "\"unknown\"",
                "\"er\\u0061se\"",
            ]),
        ),
        field(
            "variant",
            one_of(&[
                "\"mid\"",
                "null",
                "\"\"",
                "5",
                "\"m\\u0069d\"",
                "\"m\\nid\"",
            ]),
        ),
        field(
            "quantity",
            one_of(&[
                "1",
                "0",
                "-0",
                "-2",
                "1.5",
                "1e3",
                "1E+3",
                "\"1e3\"",
                "1.5e-2",
                "0.0001",
                "1e-4",
                "1e400",
                "\"1e400\"",
                "99999999999999999999",
                "9223372036854775",
                "9223372036854776",
                "12345678901234.567",
                "\"lots\"",
                "null",
                "01",
                "1.",
                ".5",
                "-",
                "\"2500\"",
                "\" 1\"",
                "\"\\u0031\"",
                "true",
                "0.10000000000000000001",
                "0.5",
                "2.25",
                "7.125",
                "7.1250",
                "\"1234.5\"",
                "\"0.125\"",
                "\"0\"",
                "\"01\"",
                "\"1.\"",
                "\"1.5 \"",
                "\"-1\"",
                "00",
                "123456789012345",
                "1234567890123456",
                "123456789012345.999",
                "\"123456789012345.999\"",
                "2.5e1",
            ]),
        ),
        field(
            "status",
            one_of(&[
                "\"succeeded\"",
                "\"failed\"",
                "\"FAILED\"",
                "null",
                "\"fa\\u0069led\"",
                "1",
            ]),
        ),
        field(
            "comment",
            prop_oneof![
                one_of(&["\"c\"", "null", "\"line\\nbreak\"", "5", "\"tab\there\""]),
                Just(format!("\"{}\"", "c".repeat(2049))),
                Just(format!("\"{}\"", "c".repeat(2048))),
            ],
        ),
        prop_oneof![
            8 => Just(Vec::new()),
            1 => one_of(&[
                "\"hold\":\"h1\"",
                "\"hold\":{\"id\":\"h1\",\"account\":\"acme\"}",
                "\"hold\":{\"id\":\"h1\",\"account\":\"other\"}",
                "\"hold\":\"\"",
                "\"quantiy\":5",
                "\"user\":\"again\"",
                "\"feature\":\"erase\"",
            ])
            .prop_map(|f| vec![f]),
        ],
    );
    prop_oneof![
        12 => (fields, any::<bool>()).prop_flat_map(|((a, b, c, d, e, f, g), spaced)| {
            let all: Vec<String> = [a, b, c, d, e, f, g].concat();
            Just(all).prop_shuffle().prop_map(move |fields| {
                let sep = if spaced { " ,\n " } else { "," };
                format!("{{{}}}", fields.join(sep))
            })
        }),
        1 => one_of(&["null", "[]", "\"x\"", "{}", "{\"user\":\"u\",\"feature\":\"erase\",}"]),
        1 => Just(r#"{"kind":"purchased","credits":"2500","expires_at":null}"#.to_string()),
        1 => Just(r#"{"plan":"pro"}"#.to_string()),
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    let envelope = (
        field(
            "specversion",
            one_of(&["\"1.0\"", "\"0.3\"", "null", "1", "\"1\\u002e0\""]),
        ),
        field("id", name(&["evt-7f3a", "evt-1"])),
        field("source", name(&["production-room"])),
        field(
            "type",
            one_of(&[
                "\"ai.usage\"",
                "\"ai.usage\"",
                "\"ai.usage\"",
                "\"ai.\\u0075sage\"",
                "\"credit.grant\"",
                "\"account.plan\"",
                "\"tally.tick\"",
                "\"ai.teleport\"",
                "\"\"",
                "null",
            ]),
        ),
        field("subject", name(&["acme", "acct-42"])),
        field(
            "time",
            one_of(&[
                "\"2026-11-20T09:15:02Z\"",
                "\"2026-11-20T18:15:02.123+09:00\"",
                "\"2026-11-20t09:15:02z\"",
                "\"yesterday\"",
                "null",
                "\"2026-11-20T09:15:02\\u005a\"",
                "\"2026-11-20T09:15:02.123456789Z\"",
                "\"2026-11-20T09:15:02.1234567891Z\"",
                "\"2026-11-20T23:59:60Z\"",
                "\"2026-02-30T09:15:02Z\"",
                "\"2026-11-20T09:15:02.Z\"",
                "\"2026-11-20 09:15:02Z\"",
                "20261120",
                "\"2026-11-20T09:15:02.5Z\"",
                "\"2028-02-29T12:00:00.010Z\"",
                "\"2027-02-29T12:00:00Z\"",
                "\"2026-11-20T24:00:00Z\"",
                "\"2026-11-20T09:15:02.1x3Z\"",
                "\"2026-11-20T09:15:02Zx\"",
                "\"2026-11-20T09:15:02.123\"",
                "\"2026-11-20T09:15:02Z\\n\"",
                "\"2026-11-20T09:15:02Z",
            ]),
        ),
        field("data", data()),
        prop_oneof![
            6 => Just(Vec::new()),
            1 => one_of(&[
                "\"datacontenttype\":\"application/json\"",
                "\"ext\":{\"a\":[1,2.5e3,{\"b\":null}],\"c\":true,\"d\":false}",
                "\"ext\":[]",
                "\"ext\":{}",
                "\"ext\":-0.5E-7",
                "\"ext\":01",
                "\"ext\":[1,]",
                "\"ext\":\"\\ud800\"",
                "\"id\":\"again\"",
                "\"data\":{}",
                "\"i\\u0064\":\"x\"",
            ])
            .prop_map(|f| vec![f]),
        ],
    );
    let mutation = prop_oneof![
        10 => Just(None),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(Some),
    ];
    let tail = one_of(&["", "", "", " \n", "x", "}", "{}"]);
    (envelope, any::<bool>(), mutation, tail).prop_flat_map(
        |((a, b, c, d, e, f, g, h), spaced, mutation, tail)| {
            let all: Vec<String> = [a, b, c, d, e, f, g, h].concat();
            Just(all).prop_shuffle().prop_map(move |fields| {
                let sep = if spaced { ", " } else { "," };
                let mut bytes = format!("{{{}}}{tail}", fields.join(sep)).into_bytes();
                match &mutation {
                    // A byte replaced, or the payload cut there.
                    Some((at, byte)) if *byte % 2 == 0 => {
                        let at = at.index(bytes.len());
                        bytes[at] = *byte;
                    }
                    Some((at, _)) => {
                        let at = at.index(bytes.len());
                        bytes.truncate(at);
                    }
                    None => {}
                }
                bytes
            })
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Both parsers give the same event or the same rejection.
    #[test]
    fn borrowed_and_full_parsers_agree(payload in payload()) {
        prop_assert_eq!(
            parse(&payload, arrival()),
            parse_reference(&payload, arrival()),
            "{}",
            String::from_utf8_lossy(&payload)
        );
    }
}

/// The generator reaches every rejection the parser can give and the borrowed reader takes
/// a fair share of the payloads, so the agreement above covers both sides.
#[test]
fn the_payloads_cover_every_rejection_and_the_borrowed_path() {
    let strategy = payload();
    let mut runner = TestRunner::deterministic();
    let mut codes = BTreeSet::new();
    let mut borrowed_path = 0;
    let cases = 20_000;
    for _ in 0..cases {
        let payload = strategy.new_tree(&mut runner).expect("a payload").current();
        let reference = parse_reference(&payload, arrival());
        assert_eq!(
            parse(&payload, arrival()),
            reference,
            "{}",
            String::from_utf8_lossy(&payload)
        );
        if let Err(rejection) = &reference {
            codes.insert(rejection.code());
        }
        if borrowed::usage(&payload, arrival()).is_some() {
            borrowed_path += 1;
        }
    }
    let every: BTreeSet<&str> = [
        "not_json",
        "not_cloudevent",
        "no_subject",
        "unknown_type",
        "bad_data",
        "negative_quantity",
        "foreign_hold",
    ]
    .into_iter()
    .collect();
    assert_eq!(codes, every);
    assert!(
        borrowed_path > cases / 40,
        "only {borrowed_path} of {cases} payloads took the borrowed path"
    );
}

/// The contract's example and its escaped forms take the borrowed path.
#[test]
fn the_contract_example_is_read_in_place() {
    for payload in [
        r#"{"specversion": "1.0", "type": "ai.usage", "id": "evt-7f3a", "source": "production-room",
 "subject": "acme", "time": "2026-11-20T09:15:02Z",
 "data": {"user": "kim@acme.kr", "feature": "image_generation", "variant": "mid",
          "quantity": 1, "status": "succeeded"}}"#,
        r#"{"data":{"feature":"erase","user":"k\u00e9\/x"},"subject":"a\"b","specversion":"1.0","id":"1","source":"s","type":"ai.usage","datacontenttype":"application/json"}"#,
    ] {
        let event = borrowed::usage(payload.as_bytes(), arrival()).expect("the borrowed path");
        assert_eq!(
            Ok(event.into_event()),
            parse_reference(payload.as_bytes(), arrival())
        );
    }
}

/// The borrowed reader checks UTF-8 only where its scan meets a byte from 0x80 up (its
/// strings are handed out unchecked): every malformed sequence, in every kind of string
/// (a name, the comment, a key, an ignored attribute, an escaped string), must still give
/// the full parser's rejection, and every well-formed one its event.
#[test]
fn invalid_utf8_in_any_string_is_the_full_parsers() {
    let invalid: [&[u8]; 14] = [
        b"\x80",             // a continuation byte alone
        b"\xbf",             // the last continuation byte alone
        b"\xc0\x80",         // overlong NUL
        b"\xc1\xbf",         // overlong, two bytes
        b"\xc2",             // cut short before the quote
        b"\xc2\x41",         // a lead byte without its continuation
        b"\xe0\x80\x80",     // overlong, three bytes
        b"\xed\xa0\x80",     // a surrogate (U+D800)
        b"\xe2\x82",         // three-byte character cut short
        b"\xf0\x80\x80\x80", // overlong, four bytes
        b"\xf4\x90\x80\x80", // above U+10FFFF
        b"\xf5\x80\x80\x80", // a lead byte that never starts a character
        b"\xff",             // a byte that never appears in UTF-8
        b"\xe2\x82\xac\x80", // a valid euro sign, then a stray continuation byte
    ];
    let valid: [&[u8]; 7] = [
        "\u{a0}".as_bytes(), // the first above the C1 controls, which names refuse
        "\u{7ff}".as_bytes(),
        "\u{800}".as_bytes(),
        "\u{d7ff}".as_bytes(),
        "\u{ffff}".as_bytes(),
        "\u{10000}".as_bytes(),
        "\u{10ffff}".as_bytes(),
    ];
    // `@` marks where the sequence goes; before and after it ASCII of several lengths, so
    // the sequence falls inside and across the scan's eight-byte words.
    let templates = [
        r#"{"specversion":"1.0","type":"ai.usage","id":"evt-@","source":"s","subject":"acme","data":{"user":"u","feature":"erase"}}"#,
        r#"{"specversion":"1.0","type":"ai.usage","id":"evt-1","source":"s","subject":"acme-0123456789@","data":{"user":"u","feature":"erase"}}"#,
        r#"{"specversion":"1.0","type":"ai.usage","id":"evt-1","source":"s","subject":"acme","data":{"user":"@kim@acme.kr","feature":"erase"}}"#,
        r#"{"specversion":"1.0","type":"ai.usage","id":"evt-1","source":"s","subject":"acme","data":{"user":"u","feature":"erase","comment":"a comment @ here"}}"#,
        r#"{"specversion":"1.0","type":"ai.usage","id":"evt-1","source":"s","subject":"acme","ext@":1,"data":{"user":"u","feature":"erase"}}"#,
        r#"{"specversion":"1.0","type":"ai.usage","id":"evt-1","source":"s","subject":"acme","ext":["x@y"],"data":{"user":"u","feature":"erase"}}"#,
        r#"{"specversion":"1.0","type":"ai.usage","id":"evt-1","source":"s","subject":"acme","data":{"user":"k\u00e9@","feature":"erase"}}"#,
        r#"{"specversion":"1.0","type":"ai.usage","id":"evt-1","source":"s","subject":"acme","data":{"user":"u","feature":"erase","comment":"\n@"}}"#,
    ];
    for template in templates {
        let (head, tail) = template.split_once('@').expect("a marked place");
        let with = |sequence: &[u8]| [head.as_bytes(), sequence, tail.as_bytes()].concat();
        for sequence in invalid {
            let payload = with(sequence);
            assert!(
                borrowed::usage(&payload, arrival()).is_none(),
                "{sequence:x?} in {template}"
            );
            // The full parser decides (it refuses the sequence in a value it reads; in an
            // attribute it ignores, serde_json does not look at it).
            let reference = parse_reference(&payload, arrival());
            assert_eq!(parse(&payload, arrival()), reference, "{template}");
        }
        for sequence in valid {
            let payload = with(sequence);
            let reference = parse_reference(&payload, arrival());
            assert_eq!(parse(&payload, arrival()), reference, "{template}");
            // The reader takes every template except the unknown field in `data`; none
            // of these has one, so each well-formed payload is read in place.
            let event = borrowed::usage(&payload, arrival());
            assert_eq!(
                event.map(|e| e.into_event()),
                Some(reference.expect("a valid payload")),
                "{sequence:x?} in {template}"
            );
        }
    }
}
