//! `metrics`: the counters in Prometheus's text exposition format (version 0.0.4).
//!
//! Runs in the control worker, on the parent's typed snapshot.

use std::fmt::Write;

use privsep::control::{Metrics, LOOKUP_BUCKETS_MS};

/// A label value with `\`, `"` and newlines escaped, as the format requires.
fn label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The whole exposition.
pub fn render(m: &Metrics) -> String {
    let mut o = String::new();
    head(
        &mut o,
        "portnanny_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
    );
    let _ = writeln!(o, "portnanny_uptime_seconds {}", m.uptime_s);
    head(
        &mut o,
        "portnanny_policy_generation",
        "gauge",
        "The policy generation in use.",
    );
    let _ = writeln!(o, "portnanny_policy_generation {}", m.policy_gen);
    head(
        &mut o,
        "portnanny_connections_accepted_total",
        "counter",
        "Connections accepted.",
    );
    let _ = writeln!(
        o,
        "portnanny_connections_accepted_total {}",
        m.connections_total
    );
    head(
        &mut o,
        "portnanny_connections",
        "gauge",
        "Live connections by state.",
    );
    for (state, n) in [
        ("pending", m.pending),
        ("running", m.running),
        ("writing", m.writing),
    ] {
        let _ = writeln!(o, "portnanny_connections{{state=\"{state}\"}} {n}");
    }
    head(
        &mut o,
        "portnanny_class_verdicts_total",
        "counter",
        "Verdicts by action class (\"-\": no class had an action).",
    );
    for c in &m.classes {
        let _ = writeln!(
            o,
            "portnanny_class_verdicts_total{{class=\"{}\"}} {}",
            label(&c.class),
            c.accepted
        );
    }
    head(
        &mut o,
        "portnanny_class_active",
        "gauge",
        "Live connections by action class.",
    );
    for c in &m.classes {
        let _ = writeln!(
            o,
            "portnanny_class_active{{class=\"{}\"}} {}",
            label(&c.class),
            c.active
        );
    }
    head(
        &mut o,
        "portnanny_refused_total",
        "counter",
        "Connections refused, by reason.",
    );
    for (reason, n) in &m.refused {
        let _ = writeln!(
            o,
            "portnanny_refused_total{{reason=\"{}\"}} {n}",
            label(reason)
        );
    }
    head(
        &mut o,
        "portnanny_lookups_total",
        "counter",
        "Lookups by kind.",
    );
    for l in &m.lookups {
        let _ = writeln!(
            o,
            "portnanny_lookups_total{{kind=\"{}\"}} {}",
            label(&l.kind),
            l.count
        );
    }
    head(
        &mut o,
        "portnanny_lookup_failures_total",
        "counter",
        "Lookups that failed or timed out, by kind.",
    );
    for l in &m.lookups {
        let _ = writeln!(
            o,
            "portnanny_lookup_failures_total{{kind=\"{}\"}} {}",
            label(&l.kind),
            l.failures
        );
    }
    head(
        &mut o,
        "portnanny_lookup_duration_seconds",
        "histogram",
        "Lookup latency, from the classifier's question to the resolver's answer.",
    );
    for l in &m.lookups {
        let kind = label(&l.kind);
        for (bound, n) in LOOKUP_BUCKETS_MS.iter().zip(&l.buckets) {
            let le = *bound as f64 / 1000.0;
            let _ = writeln!(
                o,
                "portnanny_lookup_duration_seconds_bucket{{kind=\"{kind}\",le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            o,
            "portnanny_lookup_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
            l.count
        );
        let _ = writeln!(
            o,
            "portnanny_lookup_duration_seconds_sum{{kind=\"{kind}\"}} {}",
            l.sum_us as f64 / 1e6
        );
        let _ = writeln!(
            o,
            "portnanny_lookup_duration_seconds_count{{kind=\"{kind}\"}} {}",
            l.count
        );
    }
    head(
        &mut o,
        "portnanny_blocked_addresses",
        "gauge",
        "Addresses blocked now.",
    );
    let _ = writeln!(o, "portnanny_blocked_addresses {}", m.blocked_now);
    head(&mut o, "portnanny_blocks_total", "counter", "New blocks.");
    let _ = writeln!(o, "portnanny_blocks_total {}", m.blocks_total);
    head(
        &mut o,
        "portnanny_worker_restarts_total",
        "counter",
        "Worker restarts by role.",
    );
    for (role, n) in &m.restarts {
        let _ = writeln!(
            o,
            "portnanny_worker_restarts_total{{role=\"{}\"}} {n}",
            label(role)
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use privsep::control::{ClassMetrics, LookupMetrics};

    #[test]
    fn renders_every_family_with_escaped_labels_and_cumulative_buckets() {
        let m = Metrics {
            uptime_s: 7,
            policy_gen: 2,
            connections_total: 10,
            running: 3,
            classes: vec![ClassMetrics {
                class: "we\"b".into(),
                accepted: 9,
                active: 3,
            }],
            refused: vec![("ipmax".into(), 1)],
            lookups: vec![LookupMetrics {
                kind: "reverse".into(),
                count: 4,
                failures: 1,
                sum_us: 1_500_000,
                buckets: vec![0, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4],
            }],
            restarts: vec![("classifier".into(), 0)],
            ..Metrics::default()
        };
        let t = render(&m);
        assert!(t.contains("portnanny_connections_accepted_total 10\n"));
        assert!(t.contains("portnanny_connections{state=\"running\"} 3\n"));
        assert!(t.contains("portnanny_class_verdicts_total{class=\"we\\\"b\"} 9\n"));
        assert!(t.contains("portnanny_refused_total{reason=\"ipmax\"} 1\n"));
        assert!(t.contains(
            "portnanny_lookup_duration_seconds_bucket{kind=\"reverse\",le=\"0.005\"} 1\n"
        ));
        assert!(t.contains(
            "portnanny_lookup_duration_seconds_bucket{kind=\"reverse\",le=\"+Inf\"} 4\n"
        ));
        assert!(t.contains("portnanny_lookup_duration_seconds_sum{kind=\"reverse\"} 1.5\n"));
        assert!(t.contains("# TYPE portnanny_lookup_duration_seconds histogram\n"));
        // Every sample line is NAME{...} VALUE or NAME VALUE.
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.rsplit(' ').count(), 2, "{line}");
        }
    }
}
