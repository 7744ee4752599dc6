//! PNG bar charts of the bench results (plotters, bitmap backend). Text is drawn with ab_glyph
//! from DejaVu Sans (Debian's fonts-dejavu-core, installed by xtask), so no fontconfig is needed.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

const FONT_PACKAGE: &str = "fonts-dejavu-core";
const FONT_FILE: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One panel: a title and a value per proxy (`None`: not measured).
pub struct Panel {
    pub title: String,
    pub bars: Vec<(String, Option<f64>)>,
}

/// Installs the font if needed and registers it as "sans-serif" once per process.
pub fn ensure_font() -> Result<()> {
    super::peers::ensure_apt(&[FONT_PACKAGE])?;
    static REGISTER: Once = Once::new();
    let mut result = Ok(());
    REGISTER.call_once(|| {
        result = (|| {
            let bytes = std::fs::read(FONT_FILE).with_context(|| format!("reading {FONT_FILE}"))?;
            // plotters keeps the font for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| anyhow!("{FONT_FILE} is not a usable font"))
        })();
    });
    result
}

/// One colour per target, the same in every panel.
fn color(name: &str) -> RGBColor {
    match name {
        "cork" => RGBColor(214, 96, 40),
        "mitmproxy" => RGBColor(70, 120, 190),
        "squid" => RGBColor(110, 160, 80),
        _ => RGBColor(150, 150, 150),
    }
}

/// Draws the panels in a grid (two columns), one bar per proxy, values printed on the bars.
pub fn bar_panels(path: &Path, title: &str, panels: &[Panel]) -> Result<()> {
    let cols = 2usize;
    let rows = panels.len().div_ceil(cols).max(1);
    let (w, h) = (1200u32, 80 + 330 * rows as u32);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root.titled(title, ("sans-serif", 30)).map_err(|e| anyhow!("{e}"))?;
    let cells = root.split_evenly((rows, cols));
    for (panel, area) in panels.iter().zip(cells.iter()) {
        draw_panel(area, panel).map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, panel: &Panel) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let n = panel.bars.len().max(1);
    let max = panel.bars.iter().filter_map(|(_, v)| *v).fold(0.0f64, f64::max);
    let top = if max > 0.0 { max * 1.2 } else { 1.0 };
    let names: Vec<String> = panel.bars.iter().map(|(n, _)| n.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .caption(&panel.title, ("sans-serif", 20))
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            // Label only bar centres (i + 0.5).
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 { names.get(i).cloned().unwrap_or_default() } else { String::new() }
        })
        .y_label_formatter(&|y| short(*y))
        .label_style(("sans-serif", 15))
        .draw()?;
    for (i, (name, value)) in panel.bars.iter().enumerate() {
        let x = i as f64;
        match value {
            Some(v) => {
                chart.draw_series(std::iter::once(Rectangle::new([(x + 0.2, 0.0), (x + 0.8, *v)], color(name).filled())))?;
                chart.draw_series(std::iter::once(Text::new(short(*v), (x + 0.3, v + top * 0.03), ("sans-serif", 16))))?;
            }
            None => {
                chart.draw_series(std::iter::once(Text::new("not measured", (x + 0.22, top * 0.05), ("sans-serif", 15))))?;
            }
        }
    }
    Ok(())
}

fn short(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
