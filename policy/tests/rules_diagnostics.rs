//! Golden diagnostics for bad rules: exact `file:line:col: severity[CODE]: message` strings,
//! including positions inside continuation lines.

mod rules_common;

use policy::rules::parse_rules;
use rules_common::diags;

/// (rules text, every diagnostic it must produce)
const GOLDEN: &[(&str, &[&str])] = &[
    ("foobar", &["rules:1:1: error[R001]: a rule starts with 'CLASS:' (a class name and a colon); 'foobar' has no colon"]),
    ("foobar baz", &["rules:1:1: error[R001]: a rule starts with 'CLASS:' (a class name and a colon); 'foobar' has no colon"]),
    ("foobar:", &["rules:1:1: error[R006]: the rule for class foobar has no expression (use ALL to match everything)"]),
    ("foobar:   \n", &["rules:1:1: error[R006]: the rule for class foobar has no expression (use ALL to match everything)"]),
    ("foobar:ALL", &["rules:1:1: error[R001]: a rule starts with 'CLASS:' and a space; put a space after 'foobar:'"]),
    ("/nt: ALL", &["rules:1:1: error[R002]: the rule has no class name before ':' or '/'"]),
    ("a\u{e9}: ALL", &["rules:1:2: error[R003]: class names are printable ASCII; '\u{e9}' is not allowed"]),
    // Notes.
    ("foobar/label=: ALL", &["rules:1:8: error[R005]: 'label=' needs a label"]),
    ("foobar/baz: ALL", &["rules:1:8: error[R004]: unknown rule note 'baz' (notes are /always, /nt, /nonterminal, /label and /label=LABEL)"]),
    ("a/: ALL", &["rules:1:2: error[R004]: an empty rule note (notes are /always, /nt, /nonterminal, /label and /label=LABEL)"]),
    ("a/nt/Always: ALL", &["rules:1:6: error[R004]: unknown rule note 'Always' (notes are /always, /nt, /nonterminal, /label and /label=LABEL)"]),
    ("a/label=x/label=y: ALL", &["rules:1:11: error[R005]: a rule can have only one label"]),
    ("a/label=x/label=x: ALL", &[]),
    // Word splitting and syntax.
    ("foobar: '", &["rules:1:9: error[R010]: this quote is never closed (write '' for a quote inside quotes)"]),
    ("a: b 'it''s", &["rules:1:6: error[R010]: this quote is never closed (write '' for a quote inside quotes)"]),
    ("foobar: EXCEPT", &["rules:1:9: error[R011]: expected '(', NOT or an operand, found EXCEPT"]),
    ("a: (ALL", &["rules:1:8: error[R011]: expected '(', ')', AND, EXCEPT, NOT or an operand, found the end of the rule"]),
    ("a: ALL)", &["rules:1:7: error[R011]: expected '(', AND, EXCEPT, NOT, an operand or the end of the rule, found ')'"]),
    ("a: ip:", &["rules:1:7: error[R011]: expected an argument for ip:, found the end of the rule"]),
    ("a: ip: && x", &["rules:1:8: error[R011]: expected an argument for ip:, found AND"]),
    ("a: ALL AND", &["rules:1:11: error[R011]: expected '(', NOT or an operand, found the end of the rule"]),
    ("a: ALL:", &["rules:1:4: error[R011]: ALL takes no argument; write it without the ':'"]),
    ("a: ALL: x", &["rules:1:4: error[R020]: ALL takes no argument; write it without the ':'"]),
    // Matchers and their arguments.
    ("a: ip:1.2.3.4", &["rules:1:4: error[R023]: 'ip:1.2.3.4' is one word; a matcher and its argument need a space between them: write 'ip: 1.2.3.4'"]),
    ("a: nosuch: x", &["rules:1:4: error[R020]: unknown matcher 'nosuch:'"]),
    ("a: IP: 1.2.3.4", &["rules:1:4: error[R020]: unknown matcher 'IP:' (did you mean 'ip:'?)"]),
    ("a: %", &["rules:1:4: error[R022]: '%' is not a matcher, an IP address or a hostname"]),
    ("a: ''", &["rules:1:4: error[R022]: an empty operand ('') matches nothing; remove it"]),
    ("a: 10. 11. 'x y'", &["rules:1:12: error[R022]: 'x y' is not a matcher, an IP address or a hostname"]),
    ("foobar: ip: abc", &["rules:1:13: error[R021]: ip: 'abc' is not an IP address, prefix, CIDR netblock or range (bad characters)"]),
    ("foobar: 128.100", &["rules:1:9: error[R022]: '128.100' does not have the right number of octets for an IPv4 address (four, or one to three followed by '.' for a prefix)"]),
    ("foobar: /24", &["rules:1:9: error[R022]: '/24' has an octet that is empty or not a number from 0 to 255"]),
    ("foobar: 0.0.0.10-0.0.0.0", &["rules:1:9: error[R022]: the range '0.0.0.10-0.0.0.0' starts after it ends"]),
    ("foobar: 0.0.0.0/33", &["rules:1:9: error[R022]: '0.0.0.0/33' has a netblock size that is not a number from 0 to 32"]),
    ("foobar: 0.0.0.0/-1", &["rules:1:9: error[R022]: '0.0.0.0/-1' has a netblock size that is not a number from 0 to 32"]),
    ("foobar: 0.0.0.1/24", &["rules:1:9: error[R022]: 0.0.0.1/24 is not a proper CIDR netblock; did you mean 0.0.0.0/24?"]),
    ("foobar: ip: 127.0.0.1/24", &["rules:1:13: error[R021]: ip: 127.0.0.1/24 is not a proper CIDR netblock; did you mean 127.0.0.0/24?"]),
    ("foobar: 0.0.0.0.0", &["rules:1:9: error[R022]: '0.0.0.0.0' does not have the right number of octets for an IPv4 address (four, or one to three followed by '.' for a prefix)"]),
    ("foobar: 0.0.0.0.", &["rules:1:9: error[R022]: '0.0.0.0.' is not a valid address prefix (one to three IPv4 octets each followed by '.'; IPv6 has no prefix form, use a CIDR netblock)"]),
    ("a: 2001:db8::1/32", &["rules:1:4: error[R022]: 2001:db8::1/32 is not a proper CIDR netblock; did you mean 2001:db8::/32?"]),
    ("a: re: '[ab'", &["rules:1:8: error[R021]: re: bad regular expression '[ab': unclosed character class"]),
    ("a: hnstatus: forobtz", &["rules:1:14: error[R021]: hnstatus: 'forobtz' is not a hostname status (good, unknown, noforward, addrmismatch, KNOWN, UNKNOWN or PARANOID)"]),
    ("a: local: @", &["rules:1:11: error[R021]: local: '@' is not [PORT][@][IP] (numeric port and IP address, either may be '*' or missing, not both)"]),
    ("a: local: *@", &["rules:1:11: error[R021]: local: '*@' is not [PORT][@][IP] (numeric port and IP address, either may be '*' or missing, not both)"]),
    ("a: local: @*", &["rules:1:11: error[R021]: local: '@*' is not [PORT][@][IP] (numeric port and IP address, either may be '*' or missing, not both)"]),
    ("a: local: abc", &["rules:1:11: error[R021]: local: 'abc' is not [PORT][@][IP] (numeric port and IP address, either may be '*' or missing, not both)"]),
    ("a: dnsbl: /128.100.1.1", &["rules:1:11: error[R021]: dnsbl: '/128.100.1.1' must be a DNS zone, optionally followed by /IPADDR"]),
    ("a: dnsbl: 128.100.1.1/", &["rules:1:11: error[R021]: dnsbl: '128.100.1.1/' must be a DNS zone, optionally followed by /IPADDR"]),
    ("a: dnsbl: x/200", &["rules:1:11: error[R021]: dnsbl: the part after '/' in 'x/200' must be an IPv4 address"]),
    ("a: stallfor: 60", &["rules:1:14: error[R021]: stallfor: '60': a time must end in s, m, h or d (as in 30s, 10m, 2h, 1d)"]),
    ("a: waited: 60k", &["rules:1:12: error[R021]: waited: '60k': a time must end in s, m, h or d (as in 30s, 10m, 2h, 1d)"]),
    ("a: seenwithin: abcs", &["rules:1:16: error[R021]: seenwithin: 'abcs': a time must be a whole number followed by s, m, h or d"]),
    ("a: answerson: a", &["rules:1:15: error[R021]: answerson: 'a' is not a port number from 1 to 65535"]),
    ("a: answerson: -10", &["rules:1:15: error[R021]: answerson: '-10' is not a port number from 1 to 65535"]),
    ("a: answerson: 100000", &["rules:1:15: error[R021]: answerson: '100000' is not a port number from 1 to 65535"]),
    ("a: hostname: .", &["rules:1:14: error[R021]: hostname: '.' is not a valid hostname or .domain (letters, digits, '.', '-', '_')"]),
    ("a: hostname: ' ajk'", &["rules:1:14: error[R021]: hostname: ' ajk' is not a valid hostname or .domain (letters, digits, '.', '-', '_')"]),
    ("a: forwhn: ;", &["rules:1:12: error[R021]: forwhn: ';' is not a valid hostname (letters, digits, '.', '-', '_')"]),
    // Several errors in one line, and in several lines: all reported.
    ("a: ip: x ip: y\nb: ALL\nc: nosuch: 1", &[
        "rules:1:8: error[R021]: ip: 'x' is not an IP address, prefix, CIDR netblock or range (bad characters)",
        "rules:1:14: error[R021]: ip: 'y' is not an IP address, prefix, CIDR netblock or range (bad characters)",
        "rules:3:4: error[R020]: unknown matcher 'nosuch:'",
    ]),
    // Positions inside continuation lines.
    ("a: ALL\n  EXCEPT\n    ip: 1.2.3.4/8", &["rules:3:9: error[R021]: ip: 1.2.3.4/8 is not a proper CIDR netblock; did you mean 1.0.0.0/8?"]),
    ("# c\n\nb:\n\t# note\n\t'unterminated", &["rules:5:2: error[R010]: this quote is never closed (write '' for a quote inside quotes)"]),
    ("  a: ALL", &["rules:1:1: error[F001]: the first line is indented, which makes it a continuation of nothing"]),
    // Warnings: unreachable rules.
    ("x: ALL\ny: ALL\nz/always: ALL\nx: ALL", &[
        "rules:2:1: warning[R102]: this rule is never evaluated: the rule at line 1 matches every connection and stops evaluation (mark this rule /always, or move it earlier)",
        "rules:4:1: warning[R102]: this rule is never evaluated: the rule at line 1 always puts the connection in class x first",
    ]),
    ("a: ALL\nb/always: ALL\nc: ALL", &[
        "rules:3:1: warning[R102]: this rule is never evaluated: the rule at line 1 matches every connection and stops evaluation (mark this rule /always, or move it earlier)",
    ]),
    // ip: covering every IPv4 and IPv6 address is ALL.
    ("a: 0/0 ::/0\nb: 10.", &[
        "rules:2:1: warning[R102]: this rule is never evaluated: the rule at line 1 matches every connection and stops evaluation (mark this rule /always, or move it earlier)",
    ]),
    // /nt ALL does not stop; a later rule of the same class is still never evaluated.
    ("a/nt: ALL\nb: ALL\na/always: 10.", &[
        "rules:3:1: warning[R102]: this rule is never evaluated: the rule at line 1 always puts the connection in class a first",
    ]),
    // An earlier /nt rule of the same class may make the ALL rule skipped: no warning.
    ("a/nt: 10.\na: ALL\nb: ALL", &[]),
    // A terminal ALL that is not /always does not hide a later /always rule of its class.
    ("x: ALL\na: ALL\na/always: 10.", &[
        "rules:2:1: warning[R102]: this rule is never evaluated: the rule at line 1 matches every connection and stops evaluation (mark this rule /always, or move it earlier)",
    ]),
    // Conditional rules hide nothing.
    ("a: 10.\nb: KNOWN\nc: NOT ALL\nd: ALL", &[]),
    // Warnings: class: that can never be true.
    ("p/nt: ALL\nq: class: p class: nope\nr: class: r\ns/always: class: x\nx: ALL", &[
        "rules:2:20: warning[R101]: 'class: nope' can never be true here: no earlier rule can put a connection in class nope",
        "rules:3:11: warning[R101]: 'class: r' can never be true here: this rule is skipped once the connection is in its own class",
        "rules:4:18: warning[R101]: 'class: x' can never be true here: no earlier rule can put a connection in class x",
    ]),
    ("p: 10.\nq: class: p\nr/always: class: p", &[
        "rules:2:11: warning[R101]: 'class: p' can never be true here: the earlier rules for p are terminal, so when one matched this rule (not /always) is never evaluated",
    ]),
    ("p: NOT ALL\nq/always: class: p", &[
        "rules:2:18: warning[R101]: 'class: p' can never be true here: no earlier rule can put a connection in class p",
    ]),
    ("p/nt: 10.\nq: class: p\nr/always: NOT class: GLOBAL", &[
        "rules:3:22: warning[R101]: 'class: GLOBAL' can never be true here: no earlier rule can put a connection in class GLOBAL",
    ]),
];

#[test]
fn golden_diagnostics() {
    let mut bad = Vec::new();
    for (text, want) in GOLDEN {
        let got = diags(text);
        let want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
        if got != want {
            bad.push(format!("{text:?}\n  got:  {got:#?}\n  want: {want:#?}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn errors_withhold_the_rules_and_warnings_do_not() {
    let p = parse_rules("r", "a: ALL\nb: ALL\n");
    assert!(p.value.is_some());
    assert!(!p.has_errors());
    assert_eq!(p.diagnostics.len(), 1);
    let p = parse_rules("r", "a: ALL\nb: ip: x\n");
    assert!(p.value.is_none());
    assert!(p.has_errors());
}

#[test]
fn excerpt_points_at_the_text() {
    let p = parse_rules("r", "a: 10.\n  ip: 1.2.3.4/8 KNOWN\n");
    let d = &p.diagnostics[0];
    assert_eq!((d.line, d.col, d.width), (2, 7, 9));
    assert!(
        d.excerpt()
            .ends_with("2 |   ip: 1.2.3.4/8 KNOWN\n  |       ^^^^^^^^^"),
        "{}",
        d.excerpt()
    );
}

#[test]
fn a_rule_full_of_mistakes_reports_a_bounded_number() {
    let text = format!("a: {}\n", "% ".repeat(1000));
    let d = diags(&text);
    assert_eq!(d.len(), 11);
    assert_eq!(
        d[10],
        "rules:1:24: error[R024]: this and 989 more errors in this rule are not shown"
    );
    let mut refs = String::from("a/always:");
    for i in 0..1000 {
        refs.push_str(&format!(" class: c{i}"));
    }
    assert_eq!(diags(&refs).len(), 10);
}
