//! Reading a backend's load from its Prometheus text (vLLM, and SGLang's equivalents).

/// What one scrape said; values are summed over label sets (several engines behind one server),
/// except the cache usage, which is the fullest engine's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scraped {
    pub waiting: f64,
    pub running: f64,
    pub kv_usage: f64,
}

const WAITING: [&str; 2] = ["vllm:num_requests_waiting", "sglang:num_queue_reqs"];
const RUNNING: [&str; 2] = ["vllm:num_requests_running", "sglang:num_running_reqs"];
/// `gpu_cache_usage_perc` was renamed in vLLM 0.9 and later removed; both generations are read.
const KV: [&str; 3] = [
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "sglang:token_usage",
];

/// Parses the exposition text; `None` when it has no queue or running-request metric at all.
pub fn parse(text: &str) -> Option<Scraped> {
    let (mut waiting, mut running, mut kv) = (None::<f64>, None::<f64>, None::<f64>);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        let name = &line[..name_end];
        let slot = if WAITING.contains(&name) {
            &mut waiting
        } else if RUNNING.contains(&name) {
            &mut running
        } else if KV.contains(&name) {
            &mut kv
        } else {
            continue;
        };
        let Some(value) = sample_value(&line[name_end..]) else {
            continue;
        };
        *slot = Some(if KV.contains(&name) {
            slot.map_or(value, |v| v.max(value))
        } else {
            slot.unwrap_or(0.0) + value
        });
    }
    if waiting.is_none() && running.is_none() {
        return None;
    }
    Some(Scraped {
        waiting: waiting.unwrap_or(0.0),
        running: running.unwrap_or(0.0),
        kv_usage: kv.unwrap_or(0.0).clamp(0.0, 1.0),
    })
}

/// The value after the optional `{labels}`, ignoring an optional timestamp.
fn sample_value(rest: &str) -> Option<f64> {
    let rest = match rest.strip_prefix('{') {
        Some(r) => &r[label_end(r)?..],
        None => rest,
    };
    let v: f64 = rest.split_whitespace().next()?.parse().ok()?;
    v.is_finite().then_some(v)
}

/// Index just past the closing `}` of a label set, honouring quoted values.
fn label_end(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(i + 1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_current_vllm_names_summed_over_engines() {
        let text = r#"
# HELP vllm:num_requests_waiting Number of requests waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="1",model_name="m"} 1.0
vllm:num_requests_running{engine="0",model_name="m"} 8.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
vllm:num_requests_waiting_by_reason{reason="x"} 99
"#;
        assert_eq!(
            parse(text),
            Some(Scraped {
                waiting: 4.0,
                running: 8.0,
                kv_usage: 0.5
            })
        );
    }

    #[test]
    fn reads_the_deprecated_cache_name_and_sglang() {
        let old = "vllm:num_requests_running 2\nvllm:gpu_cache_usage_perc{model_name=\"a}b\"} 0.9 1700000000\n";
        assert_eq!(
            parse(old),
            Some(Scraped {
                waiting: 0.0,
                running: 2.0,
                kv_usage: 0.9
            })
        );
        let sg = "sglang:num_queue_reqs{tp_rank=\"0\"} 5\nsglang:num_running_reqs 7\nsglang:token_usage 0.4\n";
        assert_eq!(
            parse(sg),
            Some(Scraped {
                waiting: 5.0,
                running: 7.0,
                kv_usage: 0.4
            })
        );
    }

    #[test]
    fn pages_without_load_metrics_are_unknown_not_zero() {
        assert_eq!(parse("process_cpu_seconds_total 3\n"), None);
        assert_eq!(parse("vllm:num_requests_waiting{broken 3\n"), None);
        assert_eq!(parse("vllm:num_requests_waiting NaN\n"), None);
    }
}
