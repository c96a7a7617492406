//! nanny.conf's control directives: `control PATH`, `controlgroup GROUP`.

mod conf_common;

use conf_common::{errors, ok, BASE};
use policy::conf::parse_conf;

#[test]
fn control_and_controlgroup_load_and_print_back() {
    let c = ok(&format!(
        "{BASE}control /run/portnanny/control\ncontrolgroup adm\n"
    ));
    assert_eq!(c.control.socket.as_deref(), Some("/run/portnanny/control"));
    assert_eq!(c.control.group.as_deref(), Some("adm"));
    let again = ok(&c.to_string());
    assert_eq!(again.control, c.control);
    // Off without a line: a portnanny 2 file means the same.
    assert_eq!(ok(BASE).control.socket, None);
}

#[test]
fn bad_control_lines_name_line_and_column() {
    assert_eq!(
        errors(&format!("{BASE}control 127.0.0.1:9000\n")),
        [
            "nanny.conf:4:9: error[C005]: control must be the absolute path of a Unix socket \
          (it is never a network port); '127.0.0.1:9000' is not"
        ]
    );
    assert_eq!(
        errors(&format!("{BASE}control\n")),
        ["nanny.conf:4:1: error[C002]: 'control' needs an argument (control /run/portnanny/control)"]
    );
    assert_eq!(
        errors(&format!("{BASE}control /a\ncontrol /b\n")),
        ["nanny.conf:5:1: error[C004]: 'control' may be given only once"]
    );
    let long = format!("/{}", "x".repeat(120));
    assert!(errors(&format!("{BASE}control {long}\n"))[0].contains("at most 107 bytes"));
    assert!(errors(&format!("{BASE}controlgroup a b\n"))[0].contains("C003"));
}

#[test]
fn controlgroup_without_control_is_a_warning() {
    let p = parse_conf("nanny.conf", &format!("{BASE}controlgroup adm\n"));
    assert!(p.value.is_some());
    let msgs: Vec<String> = p.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        msgs,
        ["nanny.conf:4:1: warning[C013]: controlgroup has no effect without a 'control' socket"]
    );
}

#[test]
fn conntrack_directives_load_and_print_back() {
    let c = ok(&format!(
        "{BASE}control /run/pn\nconntrack on\nconntrackuidmask 0xffff0000\nblockflush yes\n"
    ));
    assert!(c.control.conntrack && c.control.blockflush);
    assert_eq!(c.control.uid_mask, 0xffff_0000);
    assert_eq!(ok(&c.to_string()).control, c.control);
    assert_eq!(
        ok(&format!("{BASE}conntrackuidmask 65535\n"))
            .control
            .uid_mask,
        0xffff
    );
    // Off by default.
    let d = ok(BASE).control;
    assert!(!d.conntrack && !d.blockflush && d.uid_mask == 0);
}

#[test]
fn bad_conntrack_lines_name_line_and_column() {
    // label, line, want (a substring of the one error)
    let rows = [
        (
            "not on/off",
            "conntrack maybe",
            "nanny.conf:4:11: error[C005]: 'conntrack' is on or off, not 'maybe'",
        ),
        (
            "zero mask",
            "conntrackuidmask 0",
            "nanny.conf:4:18: error[C005]: conntrackuidmask is a non-zero",
        ),
        (
            "wide mask",
            "conntrackuidmask 0x1ffffffff",
            "error[C005]: conntrackuidmask",
        ),
        (
            "twice",
            "blockflush on\nblockflush off",
            "nanny.conf:5:1: error[C004]: 'blockflush' may be given only once",
        ),
        (
            "no value",
            "conntrack",
            "'conntrack' needs an argument (conntrack on|off)",
        ),
    ];
    for (label, line, want) in rows {
        let e = errors(&format!("{BASE}{line}\n"));
        assert_eq!(e.len(), 1, "{label}: {e:?}");
        assert!(e[0].contains(want), "{label}: {}", e[0]);
    }
    let p = parse_conf("nanny.conf", &format!("{BASE}conntrack on\n"));
    let msgs: Vec<String> = p.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        msgs,
        ["nanny.conf:4:1: warning[C013]: conntrack on without a 'control' socket: nothing can ask for the table"]
    );
}
