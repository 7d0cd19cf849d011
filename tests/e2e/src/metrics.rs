//! The Prometheus text exposition, parsed by the `prometheus-parse` crate, as samples the
//! metrics tests can search.

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric (series) name, e.g. `berth_cri_requests_total`.
    pub name: String,
    /// Labels in order of appearance.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a Prometheus text exposition with the `prometheus-parse` crate. Histogram
/// buckets come back as one `<name>_bucket` sample per bucket with its `le` label (`+Inf`
/// for the last), as the exposition writes them; labels are sorted by name.
pub fn parse(text: &str) -> Vec<Sample> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let Ok(scrape) = prometheus_parse::Scrape::parse(lines) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in scrape.samples {
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => out.push(Sample {
                name: s.metric,
                labels,
                value: v,
            }),
            prometheus_parse::Value::Histogram(buckets) => {
                for b in buckets {
                    let le = if b.less_than.is_infinite() {
                        "+Inf".to_string()
                    } else {
                        b.less_than.to_string()
                    };
                    let mut l = labels.clone();
                    l.push(("le".to_string(), le));
                    out.push(Sample {
                        name: format!("{}_bucket", s.metric),
                        labels: l,
                        value: b.count,
                    });
                }
            }
            prometheus_parse::Value::Summary(quantiles) => {
                for q in quantiles {
                    let mut l = labels.clone();
                    l.push(("quantile".to_string(), q.quantile.to_string()));
                    out.push(Sample {
                        name: s.metric.clone(),
                        labels: l,
                        value: q.count,
                    });
                }
            }
        }
    }
    out
}

/// Samples named `name` whose labels include every `(key, value)` of `labels`.
pub fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .collect()
}

/// Sum of the values of [`find`].
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    find(samples, name, labels).iter().map(|s| s.value).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_gauges_and_histograms() {
        let text = "# HELP berth_cri_requests x\n# TYPE berth_cri_requests counter\n\
            berth_cri_requests_total{method=\"PullImage\"} 2\n\
            # TYPE berth_containers gauge\n\
            berth_containers{state=\"running\"} 3\n\
            # TYPE berth_cri_request_duration_seconds histogram\n\
            berth_cri_request_duration_seconds_bucket{method=\"Version\",le=\"0.5\"} 1\n\
            berth_cri_request_duration_seconds_bucket{method=\"Version\",le=\"+Inf\"} 1\n\
            berth_cri_request_duration_seconds_sum{method=\"Version\"} 0.1\n\
            berth_cri_request_duration_seconds_count{method=\"Version\"} 1\n\
            berth_image_pull_bytes_total 1.5e3\n# EOF\n";
        let s = parse(text);
        assert_eq!(
            sum(&s, "berth_cri_requests_total", &[("method", "PullImage")]),
            2.0
        );
        assert_eq!(sum(&s, "berth_containers", &[("state", "running")]), 3.0);
        assert_eq!(sum(&s, "berth_image_pull_bytes_total", &[]), 1500.0);
        let buckets = find(
            &s,
            "berth_cri_request_duration_seconds_bucket",
            &[("method", "Version")],
        );
        assert_eq!(buckets.len(), 2);
        assert!(buckets.iter().any(|b| b.label("le") == Some("+Inf")));
        assert_eq!(
            sum(&s, "berth_cri_request_duration_seconds_count", &[]),
            1.0
        );
    }
}
