//! Charts drawn with plotters.

use plotters::prelude::*;
use std::path::Path;
use trainer::training::{EvalRecord, TrainPoint};

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
