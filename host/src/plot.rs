//! Charts drawn with plotters.

use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;
use trainer::training::{EvalRecord, TrainPoint};

/// Fonts tried in order after `$HOST_FONT`: common locations on Linux, macOS and Windows.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a TTF font as "sans-serif" once per process. Charts need one for their labels;
/// without any, drawing fails with this message and the caller skips the chart.
pub fn ensure_font() -> Result<(), String> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let from_env = std::env::var("HOST_FONT").ok();
        let candidates = from_env.iter().map(String::as_str).chain(FONT_CANDIDATES.iter().copied());
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // Registered fonts must live for the whole program.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err("no TrueType font found for chart labels: install one (Debian: fonts-dejavu-core) or set HOST_FONT=/path/to/font.ttf".into())
    })
    .clone()
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// `OUT/perplexity.png`: running training perplexity and per-epoch validation perplexity
/// against epochs, log-scaled.
pub fn perplexity_chart(out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let train: Vec<TrainPoint> = read_jsonl(&out.join("train_log.jsonl"));
    let evals: Vec<EvalRecord> = read_jsonl(&out.join("metrics.jsonl"));
    if train.is_empty() && evals.is_empty() {
        return Ok(());
    }
    ensure_font()?;
    let xs = train.iter().map(|p| p.epoch).chain(evals.iter().map(|e| e.epoch as f64));
    let x_max = xs.fold(1.0f64, f64::max);
    let ys: Vec<f64> =
        train.iter().map(|p| p.train_ppl).chain(evals.iter().map(|e| e.val_ppl)).filter(|v| v.is_finite()).collect();
    let y_min = ys.iter().copied().fold(f64::INFINITY, f64::min).max(1.0) * 0.9;
    let y_max = ys.iter().copied().fold(0.0f64, f64::max).max(y_min * 2.0) * 1.1;
    let path = out.join("perplexity.png");
    let root = BitMapBackend::new(&path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Perplexity", ("sans-serif", 26))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("perplexity (log scale)")
        .y_labels(12)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart
        .draw_series(LineSeries::new(train.iter().map(|p| (p.epoch, p.train_ppl)), &BLUE))?
        .label("train (running, with dropout)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(evals.iter().map(|e| (e.epoch as f64, e.val_ppl)), RED.stroke_width(2)))?
        .label("validation")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart.draw_series(evals.iter().map(|e| Circle::new((e.epoch as f64, e.val_ppl), 4, RED.filled())))?;
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
