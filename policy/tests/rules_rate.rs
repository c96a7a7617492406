//! `rate: N/TIMESPEC` in the rules (issue 13, an extension): parsing, the canonical form,
//! diagnostics with their positions, the rules' list of distinct rates and its limit, and
//! evaluation through the lazy facts (no lookup, asked only when reached).

mod rules_common;
use rules_common::*;

use policy::rate::{parse_rate, RateSpec};
use policy::rules::MAX_RATES;

fn spec(arg: &str) -> RateSpec {
    parse_rate(arg).expect("test rate")
}

#[test]
fn parses_and_prints_canonically() {
    let rows = [
        ("rate: 10/1m", "rate: 10/60s"),
        ("rate: 1/1s", "rate: 1/1s"),
        ("rate: 300/1d", "rate: 300/86400s"),
        ("NOT rate: 5/10s", "!(rate: 5/10s)"),
    ];
    for (text, want) in rows {
        let r = rules(&format!("x: {text}\n"));
        let printed = r.rules()[0].expr.to_string();
        assert_eq!(printed, want, "{text}");
        let again = rules(&format!("x: {printed}\n"));
        assert_eq!(
            again.rules()[0].expr.to_string(),
            printed,
            "round trip {text}"
        );
    }
}

#[test]
fn bad_arguments_are_reported_at_the_argument() {
    let rows: &[(&str, &str)] = &[
        (
            "a: rate: 0/1m",
            "rules:1:10: error[R021]: rate: '0/1m': the number of attempts must be at least 1 (a rate of 0 refuses everyone: use reject)",
        ),
        (
            "a: rate: 10/1x",
            "rules:1:10: error[R021]: rate: '10/1x': a time must end in s, m, h or d (as in 30s, 10m, 2h, 1d)",
        ),
        (
            "a: rate: 10/0s",
            "rules:1:10: error[R021]: rate: '10/0s': the time must be longer than 0s",
        ),
        (
            "a: rate: 10",
            "rules:1:10: error[R021]: rate: '10' is not N/TIMESPEC (attempts per time, as in 10/1m)",
        ),
        (
            "a: rate: x/1m",
            "rules:1:10: error[R021]: rate: 'x/1m': the number of attempts must be a whole number from 1 to 1000000",
        ),
        (
            "a: 10. AND rate: 5/400d",
            "rules:1:18: error[R021]: rate: '5/400d': the time may be at most 365d",
        ),
        (
            "a: rate:10/1m",
            "rules:1:4: error[R023]: 'rate:10/1m' is one word; a matcher and its argument need a space between them: write 'rate: 10/1m'",
        ),
        (
            "a: Rate: 10/1m",
            "rules:1:4: error[R020]: unknown matcher 'Rate:' (did you mean 'rate:'?)",
        ),
    ];
    for (text, want) in rows {
        assert_eq!(diags(text), vec![want.to_string()], "{text}");
    }
}

#[test]
fn distinct_rates_in_first_use_order() {
    let r =
        rules("a: 10. AND rate: 10/1m\nb: rate: 3/10s rate: 10/60s\nc/always: NOT rate: 1/1h\n");
    assert_eq!(r.rates(), &[spec("10/1m"), spec("3/10s"), spec("1/1h")]);
    assert!(rules("a: ALL\n").rates().is_empty());
    assert!(
        !rules("a: rate: 10/1m\n").can_need_lookups(),
        "a rate needs no lookup"
    );
}

#[test]
fn at_most_max_rates_distinct_rates() {
    let mut text = String::new();
    for n in 1..=MAX_RATES {
        text.push_str(&format!("c{n}: rate: {n}/1m\n"));
    }
    // Repeating a rate already known is fine.
    text.push_str("again: rate: 1/60s\n");
    assert_eq!(rules(&text).rates().len(), MAX_RATES);
    text.push_str("over: 10. rate: 65/1m\n");
    assert_eq!(
        diags(&text),
        vec![format!(
            "rules:{}:17: error[R021]: rate: 65/60s would be the rules' 65th different rate; at \
             most 64 are allowed",
            MAX_RATES + 2
        )]
    );
}

#[test]
fn evaluation_asks_only_when_reached_and_needs_no_lookup() {
    let r = rules("slow: rate: 10/1m\nfast: ALL\n");
    let mut over = Fake::new("192.0.2.1").over("10/1m");
    assert_eq!(matched(&r, &mut over), "slow@1 GLOBAL@0");
    assert_eq!(over.lookups(), vec![Asked::Rate(spec("10/1m"))]);
    let mut under = Fake::new("192.0.2.1");
    assert_eq!(matched(&r, &mut under), "fast@2 GLOBAL@0");

    // Short-circuit: an address test that fails first means the rate is not asked.
    let r = rules("slow: 10. AND rate: 10/1m\nfast: ALL\n");
    let mut f = Fake::new("192.0.2.1").over("10/1m");
    assert_eq!(matched(&r, &mut f), "fast@2 GLOBAL@0");
    assert!(f.lookups().is_empty(), "{:?}", f.lookups());

    // Each rate is its own question: over one, not the other.
    let r = rules("burst: rate: 5/10s\nday: rate: 100/1d\nok: ALL\n");
    let mut f = Fake::new("192.0.2.1").over("100/1d");
    assert_eq!(matched(&r, &mut f), "day@2 GLOBAL@0");
    assert_eq!(
        f.lookups(),
        vec![Asked::Rate(spec("5/10s")), Asked::Rate(spec("100/1d"))]
    );
}

#[test]
fn a_rate_routes_the_excess_to_another_class() {
    // The documented shape: the excess goes to a tarpit class; the service class stays.
    let r = rules("tarpit: rate: 10/1m\nsmtp: local: 25\n");
    let mut f = Fake::new("192.0.2.1").over("10/1m");
    assert_eq!(matched(&r, &mut f), "tarpit@1 GLOBAL@0");
    let mut f = Fake::new("192.0.2.1");
    assert_eq!(matched(&r, &mut f), "smtp@2 GLOBAL@0");
}
