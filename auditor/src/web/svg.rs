//! Server-rendered SVG charts: the geometry is computed here, the markup is written by the
//! `chart.html` template (askama escapes every label), styled by classes from `style.css`
//! (the CSP allows no inline styles). No JavaScript.

/// A chart ready for `chart.html`.
#[derive(Debug, Default)]
pub struct Chart {
    pub id: String,
    pub title: String,
    pub width: u32,
    pub height: u32,
    pub rects: Vec<Rect>,
    pub lines: Vec<Line>,
    pub texts: Vec<Text>,
    /// (class, label) pairs shown under the chart
    pub legend: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub class: String,
    /// the tooltip
    pub title: String,
}

#[derive(Debug)]
pub struct Line {
    pub x1: f64,
    pub y1: f64,
    pub x2: f64,
    pub y2: f64,
    pub class: &'static str,
}

#[derive(Debug)]
pub struct Text {
    pub x: f64,
    pub y: f64,
    /// `start`, `middle` or `end`
    pub anchor: &'static str,
    pub content: String,
}

const LEFT: f64 = 48.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 36.0;

/// A round upper bound for an axis and its step (1, 2 or 5 times a power of ten).
pub fn nice_max(max: f64) -> (f64, f64) {
    if max.is_nan() || max <= 0.0 {
        return (1.0, 0.25);
    }
    let rough = max / 4.0;
    let magnitude = 10_f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|f| f * magnitude)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * magnitude);
    ((max / step).ceil() * step, step)
}

fn fmt_value(value: f64) -> String {
    if value.fract().abs() < 1e-9 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// Vertical stacked bars: one column per label, one segment per series (class, values).
pub fn stacked_columns(
    id: &str,
    title: &str,
    labels: &[String],
    series: &[(String, Vec<f64>)],
    limit: Option<f64>,
) -> Chart {
    let width = 880_u32;
    let height = 260_u32;
    let plot_w = f64::from(width) - LEFT - RIGHT;
    let plot_h = f64::from(height) - TOP - BOTTOM;
    let totals: Vec<f64> = (0..labels.len())
        .map(|i| {
            series
                .iter()
                .map(|(_, v)| v.get(i).copied().unwrap_or(0.0))
                .sum()
        })
        .collect();
    let top = totals.iter().copied().fold(limit.unwrap_or(0.0), f64::max);
    let (max, step) = nice_max(top);
    let mut chart = Chart {
        id: id.to_owned(),
        title: title.to_owned(),
        width,
        height,
        ..Chart::default()
    };
    axes(&mut chart, plot_w, plot_h, max, step);
    let n = labels.len().max(1) as f64;
    let slot = plot_w / n;
    let bar = (slot * 0.8).max(1.0);
    for (i, label) in labels.iter().enumerate() {
        let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
        let mut base = TOP + plot_h;
        for (class, values) in series {
            let value = values.get(i).copied().unwrap_or(0.0);
            if value <= 0.0 {
                continue;
            }
            let h = value / max * plot_h;
            base -= h;
            chart.rects.push(Rect {
                x,
                y: base,
                w: bar,
                h,
                class: class.clone(),
                title: format!("{label}: {} {class}", fmt_value(value)),
            });
        }
        // at most ~12 labels on the axis
        let every = (labels.len() / 12).max(1);
        if i % every == 0 {
            chart.texts.push(Text {
                x: LEFT + slot * i as f64 + slot / 2.0,
                y: TOP + plot_h + 16.0,
                anchor: "middle",
                content: label.clone(),
            });
        }
    }
    if let Some(limit) = limit {
        let y = TOP + plot_h - limit / max * plot_h;
        chart.lines.push(Line {
            x1: LEFT,
            y1: y,
            x2: LEFT + plot_w,
            y2: y,
            class: "curb",
        });
        chart.texts.push(Text {
            x: LEFT + plot_w,
            y: y - 4.0,
            anchor: "end",
            content: format!("curb {}", fmt_value(limit)),
        });
    }
    chart.legend = series
        .iter()
        .map(|(class, _)| (class.clone(), class.clone()))
        .collect();
    chart
}

/// Horizontal bars, one per (label, value), longest first as given.
pub fn horizontal_bars(id: &str, title: &str, bars: &[(String, f64)], unit: &str) -> Chart {
    let width = 560_u32;
    let row = 22.0;
    let label_w = 220.0;
    let height = (TOP + row * bars.len().max(1) as f64 + 8.0).ceil() as u32;
    let plot_w = f64::from(width) - label_w - 70.0;
    let top = bars.iter().map(|(_, v)| *v).fold(0.0, f64::max);
    let (max, _) = nice_max(top);
    let mut chart = Chart {
        id: id.to_owned(),
        title: title.to_owned(),
        width,
        height,
        ..Chart::default()
    };
    for (i, (label, value)) in bars.iter().enumerate() {
        let y = TOP + row * i as f64;
        let shown: String = if label.chars().count() > 34 {
            label.chars().take(33).chain(['…']).collect()
        } else {
            label.clone()
        };
        chart.texts.push(Text {
            x: label_w - 6.0,
            y: y + 14.0,
            anchor: "end",
            content: shown,
        });
        let w = (value / max * plot_w).max(0.0);
        chart.rects.push(Rect {
            x: label_w,
            y: y + 3.0,
            w,
            h: row - 6.0,
            class: "bar".into(),
            title: format!("{label}: {}{unit}", fmt_value(*value)),
        });
        chart.texts.push(Text {
            x: label_w + w + 4.0,
            y: y + 14.0,
            anchor: "start",
            content: format!("{}{unit}", fmt_value(*value)),
        });
    }
    if bars.is_empty() {
        chart.texts.push(Text {
            x: 8.0,
            y: TOP + 14.0,
            anchor: "start",
            content: "no data".into(),
        });
    }
    chart
}

fn axes(chart: &mut Chart, plot_w: f64, plot_h: f64, max: f64, step: f64) {
    let mut value = 0.0;
    while value <= max + step / 2.0 {
        let y = TOP + plot_h - value / max * plot_h;
        chart.lines.push(Line {
            x1: LEFT,
            y1: y,
            x2: LEFT + plot_w,
            y2: y,
            class: "grid",
        });
        chart.texts.push(Text {
            x: LEFT - 6.0,
            y: y + 4.0,
            anchor: "end",
            content: fmt_value(value),
        });
        value += step;
    }
    chart.lines.push(Line {
        x1: LEFT,
        y1: TOP + plot_h,
        x2: LEFT + plot_w,
        y2: TOP + plot_h,
        class: "axis",
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round() {
        assert_eq!(nice_max(0.0), (1.0, 0.25));
        assert_eq!(nice_max(7.0), (8.0, 2.0));
        assert_eq!(nice_max(93.0), (100.0, 50.0));
        assert_eq!(nice_max(f64::NAN), (1.0, 0.25));
    }
}
