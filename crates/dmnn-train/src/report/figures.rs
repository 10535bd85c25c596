//! The report's figures, drawn with `plotters` into PNG files (no display, no system fonts: the
//! text is DejaVu Sans, vendored under `assets/`). Every function takes plain numbers; what they
//! mean is the caller's.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Result, TrainError};

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

type Draw = std::result::Result<(), Box<dyn std::error::Error>>;

/// Series colours: distinguishable on white, in this order.
const COLOURS: [RGBColor; 20] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 128),
    RGBColor(170, 110, 0),
    RGBColor(0, 100, 60),
    RGBColor(128, 0, 64),
    RGBColor(90, 60, 160),
    RGBColor(60, 60, 60),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(174, 199, 232),
    RGBColor(255, 152, 150),
];

/// The colour of series `i`.
pub fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

fn register_font() {
    REGISTER.call_once(|| {
        // the font is compiled in; a failure here is a damaged build, not a user's input
        if plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_err() {
            panic!("the vendored DejaVu Sans does not parse");
        }
    });
}

/// Draws into a fresh PNG of `size` pixels at `path`.
fn png(path: &Path, size: (u32, u32), draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Draw) -> Result<()> {
    register_font();
    let failed = |e: &dyn std::fmt::Display| TrainError::Other(format!("drawing {}: {e}", path.display()));
    // the image encoder picks the format from the extension
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| failed(&e))?;
        draw(&root).map_err(|e| failed(&e))?;
        root.present().map_err(|e| failed(&e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// A range that holds `values` with a margin, never empty.
fn padded(values: impl Iterator<Item = f64>, pad: f64) -> std::ops::Range<f64> {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let span = if hi > lo { hi - lo } else { hi.abs().max(1e-9) * 0.1 };
    (lo - pad * span)..(hi + pad * span)
}

/// `range` raised at the top so that a legend of `rows` entries in the upper corner of a plot
/// `plot_height` pixels high covers no data.
fn legend_room(range: std::ops::Range<f64>, rows: usize, plot_height: f64) -> std::ops::Range<f64> {
    let share = ((rows as f64 * 17.0 + 14.0) / plot_height).min(0.6);
    let span = range.end - range.start;
    range.start..range.end + span * share / (1.0 - share)
}

/// Draws the legend of `chart`'s labelled series at `position`, text `size` pixels high.
fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
    size: u32,
) -> Draw
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, size))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

/// One run in the error-vs-GMACs figure.
#[derive(Debug, Clone)]
pub struct RunPoint {
    /// Legend entry (the run's group).
    pub series: String,
    /// Mean executed GMACs per image.
    pub gmacs: f64,
    /// The horizontal bar: the standard deviation of the GMACs (over the test images, or over
    /// the seeds for a configuration's mean).
    pub gmacs_std: f64,
    /// Top-1 error in %.
    pub error: f64,
    /// The vertical bar: the standard deviation of the error over the seeds (0: none drawn).
    pub error_std: f64,
    /// A dynamic network (circle) or a static one (square).
    pub dynamic: bool,
}

/// A dynamic run's threshold sweep: `(GMACs, top-1 error %)` per threshold, the first at
/// threshold 0 (every path on).
#[derive(Debug, Clone)]
pub struct SweepCurve {
    /// Legend entry of its run.
    pub series: String,
    /// The points, in threshold order.
    pub points: Vec<(f64, f64)>,
}

/// Figure 1: top-1 error against executed GMACs per image; `bars` says what the error bars are.
pub fn error_vs_gmacs(path: &Path, title: &str, bars: &str, runs: &[RunPoint], sweeps: &[SweepCurve]) -> Result<()> {
    let mut series: Vec<&str> = Vec::new();
    for name in runs.iter().map(|r| r.series.as_str()).chain(sweeps.iter().map(|s| s.series.as_str())) {
        if !series.contains(&name) {
            series.push(name);
        }
    }
    let index = |name: &str| series.iter().position(|s| *s == name).unwrap_or(0);
    let xs = runs
        .iter()
        .flat_map(|r| [r.gmacs - r.gmacs_std, r.gmacs + r.gmacs_std])
        .chain(sweeps.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let ys = runs
        .iter()
        .flat_map(|r| [r.error - r.error_std, r.error + r.error_std])
        .chain(sweeps.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let (x_range, y_range) = (padded(xs, 0.08), padded(ys, 0.1));
    // the legend has a column of its own: a study has a dozen series
    let height = 620.max(110 + 20 * (series.len() as u32 + 3));
    png(path, (1420, height), |root| {
        let root = root.titled(title, (FONT, 20))?;
        let (plot, side) = root.split_horizontally(900);
        let mut chart = ChartBuilder::on(&plot)
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(x_range, y_range)?;
        chart
            .configure_mesh()
            .x_desc(format!("executed GMACs per image ({bars})"))
            .y_desc("top-1 error (%)")
            .x_label_formatter(&|v| format!("{v:.4}"))
            .y_label_formatter(&|v| format!("{v:.2}"))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for curve in sweeps {
            let c = colour(index(&curve.series));
            chart.draw_series(LineSeries::new(curve.points.iter().copied(), c.mix(0.6).stroke_width(1)))?;
            chart.draw_series(curve.points.iter().skip(1).map(|&p| Circle::new(p, 2, c.mix(0.6).filled())))?;
            if let Some(&p) = curve.points.first() {
                chart.draw_series(std::iter::once(Cross::new(p, 6, c.stroke_width(2))))?;
            }
        }
        for r in runs {
            let c = colour(index(&r.series));
            chart.draw_series(std::iter::once(ErrorBar::new_horizontal(
                r.error,
                r.gmacs - r.gmacs_std,
                r.gmacs,
                r.gmacs + r.gmacs_std,
                c.stroke_width(1),
                8,
            )))?;
            if r.error_std > 0.0 {
                chart.draw_series(std::iter::once(ErrorBar::new_vertical(
                    r.gmacs,
                    r.error - r.error_std,
                    r.error,
                    r.error + r.error_std,
                    c.stroke_width(1),
                    8,
                )))?;
            }
            if r.dynamic {
                chart.draw_series(std::iter::once(Circle::new((r.gmacs, r.error), 5, c.filled())))?;
            } else {
                chart.draw_series(std::iter::once(
                    EmptyElement::at((r.gmacs, r.error)) + Rectangle::new([(-5, -5), (5, 5)], c.filled()),
                ))?;
            }
        }
        // the legend: one entry per series, then what the marks mean
        let row = |i: usize| 30 + 20 * i as i32;
        for (i, name) in series.iter().enumerate() {
            let c = colour(i);
            let dynamic =
                runs.iter().any(|r| r.series == *name && r.dynamic) || sweeps.iter().any(|s| s.series == *name);
            if dynamic {
                side.draw(&Circle::new((16, row(i)), 5, c.filled()))?;
            } else {
                side.draw(&Rectangle::new([(11, row(i) - 5), (21, row(i) + 5)], c.filled()))?;
            }
            side.draw(&Text::new(name.to_string(), (32, row(i) - 7), (FONT, 13)))?;
        }
        if !sweeps.is_empty() {
            let (a, b) = (row(series.len() + 1), row(series.len() + 2));
            side.draw(&PathElement::new(vec![(6, a), (26, a)], BLACK.mix(0.6)))?;
            side.draw(&Text::new("threshold sweep (0.3 … 0.95)", (32, a - 7), (FONT, 12)))?;
            side.draw(&Cross::new((16, b), 6, BLACK.stroke_width(2)))?;
            side.draw(&Text::new("every path on (threshold 0)", (32, b - 7), (FONT, 12)))?;
        }
        Ok(())
    })
}

/// One image of the easy/hard figure.
#[derive(Debug, Clone)]
pub struct Tile {
    /// RGB pixels, row-major, `height · width`.
    pub pixels: Vec<[u8; 3]>,
    /// Height of the image.
    pub height: usize,
    /// Width of the image.
    pub width: usize,
    /// Caption lines under the image (long ones are shortened to fit).
    pub caption: [String; 3],
    /// Draws the caption in red (a wrong prediction).
    pub wrong: bool,
}

/// A titled row of tiles.
#[derive(Debug, Clone)]
pub struct TileRow {
    /// The row's title.
    pub title: String,
    /// Its images.
    pub tiles: Vec<Tile>,
    /// A gap before this tile (between two groups of a row).
    pub gap_before: Option<usize>,
}

/// Width of the gap of a [`TileRow`].
const GAP: usize = 28;

/// Side of a tile on the figure.
const TILE: usize = 84;
const COLUMN: usize = 124;
const ROW: usize = 22 + TILE + 48;
/// Characters of a caption line that fit under a tile.
const CAPTION_CHARS: usize = 19;

fn fit(line: &str) -> String {
    if line.chars().count() <= CAPTION_CHARS {
        line.to_string()
    } else {
        line.chars().take(CAPTION_CHARS - 1).chain(['…']).collect()
    }
}

/// Figure 2: rows of test images with their captions.
pub fn tiles(path: &Path, title: &str, rows: &[TileRow]) -> Result<()> {
    let columns = rows.iter().map(|r| r.tiles.len()).max().unwrap_or(1).max(1);
    let gap = if rows.iter().any(|r| r.gap_before.is_some()) { GAP } else { 0 };
    let width = (16 + columns * COLUMN + gap).max(520) as u32;
    let height = (44 + rows.len() * ROW) as u32;
    png(path, (width, height), |root| {
        root.draw(&Text::new(title.to_string(), (10, 10), (FONT, 18)))?;
        for (r, row) in rows.iter().enumerate() {
            let top = 44 + r * ROW;
            root.draw(&Text::new(row.title.clone(), (10, top as i32), (FONT, 14)))?;
            for (c, tile) in row.tiles.iter().enumerate() {
                let shift = if row.gap_before.is_some_and(|g| c >= g) { GAP } else { 0 };
                let column = 10 + shift + c * COLUMN;
                let left = column + (COLUMN - TILE) / 2;
                let y0 = top + 20;
                for y in 0..TILE {
                    for x in 0..TILE {
                        // nearest neighbour: a pixel of the image per block of the tile
                        let [r8, g8, b8] = tile.pixels[(y * tile.height / TILE) * tile.width + x * tile.width / TILE];
                        root.draw_pixel(((left + x) as i32, (y0 + y) as i32), &RGBColor(r8, g8, b8))?;
                    }
                }
                let colour = if tile.wrong { RGBColor(200, 0, 0) } else { BLACK };
                let style = TextStyle::from((FONT, 11)).color(&colour).pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Top,
                ));
                let cx = (column + COLUMN / 2) as i32;
                for (k, line) in tile.caption.iter().enumerate() {
                    root.draw(&Text::new(fit(line), (cx, (y0 + TILE + 3 + 14 * k) as i32), style.clone()))?;
                }
            }
        }
        Ok(())
    })
}

/// A colour for `v` in [0, 1]: dark blue (0) through teal to yellow (1), like viridis.
pub fn heat(v: f64) -> RGBColor {
    const STOPS: [(f64, [f64; 3]); 5] = [
        (0.0, [68.0, 1.0, 84.0]),
        (0.25, [59.0, 82.0, 139.0]),
        (0.5, [33.0, 145.0, 140.0]),
        (0.75, [94.0, 201.0, 98.0]),
        (1.0, [253.0, 231.0, 37.0]),
    ];
    let v = if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
    let k = STOPS.iter().position(|(s, _)| *s >= v).unwrap_or(4).max(1);
    let ((s0, c0), (s1, c1)) = (STOPS[k - 1], STOPS[k]);
    let t = (v - s0) / (s1 - s0);
    let mix = |i: usize| (c0[i] + t * (c1[i] - c0[i])).round() as u8;
    RGBColor(mix(0), mix(1), mix(2))
}

/// Figure 3: the open rate of every gated block per class (heatmap, `rates[class][block]`) and
/// over all images (bars).
pub fn open_rates(path: &Path, title: &str, classes: &[String], rates: &[Vec<f64>], overall: &[f64]) -> Result<()> {
    let blocks = overall.len().max(1);
    let height = (140 + 22 * classes.len() + 230) as u32;
    png(path, ((200 + 46 * blocks).max(640) as u32, height), |root| {
        let root = root.titled(title, (FONT, 18))?;
        let (top, bottom) = root.split_vertically(height as i32 - 250);
        let (map_area, bar_area) = (top.margin(4, 4, 4, 70), bottom.margin(4, 4, 4, 70));
        let mut chart = ChartBuilder::on(&map_area)
            .x_label_area_size(36)
            .y_label_area_size(110)
            // a segmented integer range `a..b` holds the segments a..=b
            .build_cartesian_2d((0..blocks - 1).into_segmented(), (0..classes.len().max(1) - 1).into_segmented())?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(blocks)
            .y_labels(classes.len().max(1))
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(b) => format!("{}", b + 1),
                _ => String::new(),
            })
            // the first class on top
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(k) => classes.get(classes.len() - 1 - *k).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc("gated block (input to output)")
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .draw()?;
        for (k, row) in rates.iter().enumerate() {
            let k = rates.len() - 1 - k;
            for (b, &v) in row.iter().enumerate() {
                chart.draw_series(std::iter::once(Rectangle::new(
                    [
                        (SegmentValue::Exact(b), SegmentValue::Exact(k)),
                        (SegmentValue::Exact(b + 1), SegmentValue::Exact(k + 1)),
                    ],
                    heat(v).filled(),
                )))?;
                if blocks <= 24 && classes.len() <= 24 {
                    let ink = if v > 0.6 { BLACK } else { WHITE };
                    let style = TextStyle::from((FONT, 11)).color(&ink).pos(plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Center,
                    ));
                    chart.draw_series(std::iter::once(Text::new(
                        format!("{v:.2}"),
                        (SegmentValue::CenterOf(b), SegmentValue::CenterOf(k)),
                        style,
                    )))?;
                }
            }
        }
        // the colour scale, in the right margin of the map
        let (w, _) = top.dim_in_pixel();
        let scale = top.margin(30, 40, w as i32 - 56, 10);
        let (_, sh) = scale.dim_in_pixel();
        for y in 0..sh {
            let v = 1.0 - y as f64 / sh.max(1) as f64;
            scale.draw(&Rectangle::new([(0, y as i32), (14, y as i32 + 1)], heat(v).filled()))?;
        }
        scale.draw(&Text::new("1", (18, 0), (FONT, 11)))?;
        scale.draw(&Text::new("0", (18, sh as i32 - 10), (FONT, 11)))?;
        let mut bars = ChartBuilder::on(&bar_area)
            .caption("open rate per block, every test image", (FONT, 14))
            .x_label_area_size(36)
            .y_label_area_size(110)
            .build_cartesian_2d((0..blocks - 1).into_segmented(), 0.0..1.05)?;
        bars.configure_mesh()
            .disable_x_mesh()
            .x_labels(blocks)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(b) => format!("{}", b + 1),
                _ => String::new(),
            })
            .y_desc("open rate")
            .x_desc("gated block")
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .draw()?;
        bars.draw_series(overall.iter().enumerate().map(|(b, &v)| {
            let mut bar =
                Rectangle::new([(SegmentValue::Exact(b), 0.0), (SegmentValue::Exact(b + 1), v)], colour(0).filled());
            bar.set_margin(0, 0, 6, 6);
            bar
        }))?;
        Ok(())
    })
}

/// Figure 4: histogram of the executed GMACs per image, with the all-paths-on cost marked.
pub fn gmacs_histogram(path: &Path, title: &str, gmacs: &[f64], gmacs_full: f64) -> Result<()> {
    let range = padded(gmacs.iter().copied().chain([gmacs_full]), 0.05);
    let bins = 40usize;
    let width = (range.end - range.start) / bins as f64;
    let mut counts = vec![0usize; bins];
    for &g in gmacs {
        let b = (((g - range.start) / width) as usize).min(bins - 1);
        counts[b] += 1;
    }
    let top = legend_room(0.0..counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.05, 1, 340.0).end;
    png(path, (800, 440), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 18))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(range.clone(), 0.0..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("executed GMACs per image")
            .y_desc("test images")
            .x_label_formatter(&|v| format!("{v:.4}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .draw()?;
        chart.draw_series(counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(b, &c)| {
            let x0 = range.start + b as f64 * width;
            Rectangle::new([(x0, 0.0), (x0 + width, c as f64)], colour(0).filled())
        }))?;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(gmacs_full, 0.0), (gmacs_full, top)],
                6,
                4,
                colour(3).stroke_width(2),
            ))?
            .label(format!("every path on: {gmacs_full:.5} GMACs"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour(3).stroke_width(2)));
        legend(&mut chart, SeriesLabelPosition::UpperMiddle, 12)?;
        Ok(())
    })
}

/// One line of a training-curve panel: `(epoch, value)`.
#[derive(Debug, Clone)]
pub struct Curve {
    /// Legend entry.
    pub name: String,
    /// The points.
    pub points: Vec<(f64, f64)>,
    /// Colour index.
    pub colour: usize,
    /// Dashed (validation) or solid (training).
    pub dashed: bool,
}

/// A panel of training curves.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Its title.
    pub title: String,
    /// Its y axis.
    pub y_desc: String,
    /// Its lines.
    pub curves: Vec<Curve>,
}

/// Figure 5: training curves per epoch, one panel per quantity.
pub fn training_curves(path: &Path, title: &str, panels: &[Panel]) -> Result<()> {
    let n = panels.len().max(1);
    png(path, ((440 * n) as u32, 440), |root| {
        let root = root.titled(title, (FONT, 18))?;
        for (area, panel) in root.split_evenly((1, n)).iter().zip(panels) {
            let epochs = panel.curves.iter().flat_map(|c| c.points.iter().map(|p| p.0));
            let (lo, hi) = epochs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), e| (lo.min(e), hi.max(e)));
            let x_range = if lo.is_finite() { (lo - 0.2)..(hi + 0.2).max(lo + 0.8) } else { 0.0..1.0 };
            let y_range = legend_room(
                padded(panel.curves.iter().flat_map(|c| c.points.iter().map(|p| p.1)), 0.08),
                panel.curves.len(),
                320.0,
            );
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, (FONT, 14))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d(x_range, y_range)?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .y_desc(&panel.y_desc)
                .x_label_formatter(&|v| if (v - v.round()).abs() < 1e-9 { format!("{v:.0}") } else { String::new() })
                .label_style((FONT, 11))
                .axis_desc_style((FONT, 12))
                .light_line_style(WHITE.mix(0.0))
                .draw()?;
            for curve in &panel.curves {
                let c = colour(curve.colour);
                let style = c.stroke_width(2);
                let points = curve.points.clone();
                let anno = if curve.dashed {
                    chart.draw_series(DashedLineSeries::new(points.clone(), 6, 4, style))?
                } else {
                    chart.draw_series(LineSeries::new(points.clone(), style))?
                };
                let dashed = curve.dashed;
                anno.label(&curve.name).legend(move |(x, y)| {
                    let end = if dashed { x + 8 } else { x + 16 };
                    PathElement::new(vec![(x, y), (end, y)], c.stroke_width(2))
                });
                chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
            }
            legend(&mut chart, SeriesLabelPosition::UpperRight, 11)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heat_runs_from_dark_to_bright() {
        let brightness = |c: RGBColor| c.0 as u32 + c.1 as u32 + c.2 as u32;
        assert_eq!(heat(0.0), RGBColor(68, 1, 84));
        assert_eq!(heat(1.0), RGBColor(253, 231, 37));
        assert!(brightness(heat(0.2)) < brightness(heat(0.8)));
        assert_eq!(heat(f64::NAN), heat(0.0));
    }

    #[test]
    fn padded_range_is_never_empty() {
        assert_eq!(padded([2.0, 2.0].into_iter(), 0.1), 1.98..2.02);
        assert_eq!(padded(std::iter::empty(), 0.1), 0.0..1.0);
        let r = padded([1.0, 3.0, f64::NAN].into_iter(), 0.5);
        assert_eq!(r, 0.0..4.0);
    }
}
