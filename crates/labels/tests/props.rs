//! Property tests: parse ∘ format is the identity on canonical text, format ∘ parse is
//! canonicalisation, no input panics, and dominance agrees with a set model.

use std::collections::BTreeSet;

use proptest::prelude::*;
use svirt_labels::{CategorySet, Context, Level, LevelOrdering, MlsRange};

/// The kernel's canonical text of a category set, computed independently from a BTreeSet.
fn model_canonical(cats: &BTreeSet<u16>) -> String {
    let v: Vec<u16> = cats.iter().copied().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        match j - i {
            0 => out.push(format!("c{}", v[i])),
            1 => out.push(format!("c{},c{}", v[i], v[j])),
            _ => out.push(format!("c{}.c{}", v[i], v[j])),
        }
        i = j + 1;
    }
    out.join(",")
}

/// A category list as a user might write it: any order, duplicates, ranges.
fn category_items() -> impl Strategy<Value = Vec<(u16, Option<u16>)>> {
    prop::collection::vec(
        prop_oneof![
            (0u16..1024).prop_map(|c| (c, None)),
            (0u16..1023, 1u16..40).prop_map(|(a, len)| (a, Some((a + len).min(1023)))),
        ],
        1..12,
    )
}

fn render_items(items: &[(u16, Option<u16>)]) -> (String, BTreeSet<u16>) {
    let mut set = BTreeSet::new();
    let text: Vec<String> = items
        .iter()
        .map(|&(a, b)| match b {
            Some(b) if b > a => {
                set.extend(a..=b);
                format!("c{a}.c{b}")
            }
            _ => {
                set.insert(a);
                format!("c{a}")
            }
        })
        .collect();
    (text.join(","), set)
}

fn ident() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_.-]{0,12}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn format_of_parse_is_kernel_canonicalisation(items in category_items(), sens in 0u16..16) {
        let (text, set) = render_items(&items);
        let level = Level::parse(&format!("s{sens}:{text}")).unwrap();
        let canon = level.to_string();
        prop_assert_eq!(&canon, &format!("s{sens}:{}", model_canonical(&set)));
        // Canonical text is a fixed point.
        prop_assert_eq!(Level::parse(&canon).unwrap().to_string(), canon);
    }

    #[test]
    fn parse_of_canonical_is_identity(items in category_items(), u in ident(), r in ident(), t in ident(),
                                      high_extra in category_items()) {
        let (text, set) = render_items(&items);
        let low = format!("s0:{}", model_canonical(&set));
        let (htext, hset) = render_items(&high_extra);
        let all: BTreeSet<u16> = set.union(&hset).copied().collect();
        let high = format!("s1:{}", model_canonical(&all));
        for ctx in [format!("{u}:{r}:{t}:{low}"), format!("{u}:{r}:{t}:{low}-{high}"), format!("{u}:{r}:{t}")] {
            let parsed = Context::parse(&ctx).unwrap();
            prop_assert_eq!(parsed.to_string(), ctx);
        }
        let _ = (text, htext);
    }

    #[test]
    fn no_input_panics(s in "\\PC{0,80}") {
        let _ = Context::parse(&s).map(|c| c.to_string());
        let _ = MlsRange::parse(&s).map(|r| r.to_string());
        let _ = CategorySet::parse(&s, 1024);
    }

    #[test]
    fn no_label_shaped_input_panics(s in "[a-z_:.,sc0-9-]{0,60}") {
        if let Ok(c) = Context::parse(&s) {
            // Whatever parsed must re-parse to the same value from its canonical text.
            prop_assert_eq!(Context::parse(&c.to_string()).unwrap(), c);
        }
        if let Ok(r) = MlsRange::parse(&s) {
            prop_assert!(r.high.dominates(&r.low));
            prop_assert_eq!(MlsRange::parse(&r.to_string()).unwrap(), r);
        }
    }

    #[test]
    fn dominance_matches_the_set_model(a in category_items(), b in category_items(), sa in 0u16..3, sb in 0u16..3) {
        let (ta, set_a) = render_items(&a);
        let (tb, set_b) = render_items(&b);
        let la = Level::parse(&format!("s{sa}:{ta}")).unwrap();
        let lb = Level::parse(&format!("s{sb}:{tb}")).unwrap();
        let dom = sa >= sb && set_a.is_superset(&set_b);
        prop_assert_eq!(la.dominates(&lb), dom);
        let rev = sb >= sa && set_b.is_superset(&set_a);
        let expected = match (dom, rev) {
            (true, true) => LevelOrdering::Equal,
            (true, false) => LevelOrdering::Dominates,
            (false, true) => LevelOrdering::DominatedBy,
            (false, false) => LevelOrdering::Incomparable,
        };
        prop_assert_eq!(la.compare(&lb), expected);
        prop_assert!(la.dominates(&la));
        // A range is valid exactly when high dominates low.
        let range = format!("s{sa}:{ta}-s{sb}:{tb}");
        prop_assert_eq!(MlsRange::parse(&range).is_ok(), rev);
    }
}
