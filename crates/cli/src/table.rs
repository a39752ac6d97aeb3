//! Plain-text tables for the `durabletask` CLI and the demo: left-aligned columns separated by two
//! spaces, a dashed rule under the header, cells cut to a maximum width.

use std::fmt::Write as _;
use std::time::Duration;

/// A text table.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    max_cell: usize,
}

impl Table {
    /// A table with these column headers; cells longer than 60 characters are cut.
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
            max_cell: 60,
        }
    }

    /// Sets the longest cell (in characters) before it is cut with `…`.
    pub fn max_cell_width(mut self, width: usize) -> Self {
        self.max_cell = width.max(1);
        self
    }

    /// Appends a row (missing cells are empty, extra cells are dropped).
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut row: Vec<String> =
            cells.into_iter().map(|c| cut(&c.into(), self.max_cell)).collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rendered table, one line per row, each ending in `\n`.
    pub fn render(&self) -> String {
        let cols = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let mut l = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(cell);
                } else {
                    let pad = widths[i].saturating_sub(cell.chars().count());
                    let _ = write!(l, "{cell}{}  ", " ".repeat(pad));
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&mut out, &self.headers);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&mut out, &rule);
        for row in &self.rows {
            line(&mut out, row);
        }
        out
    }
}

/// `s` cut to `max` characters, ending in `…` when cut; newlines become spaces.
pub fn cut(s: &str, max: usize) -> String {
    let flat: String = s.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }).collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let mut t: String = flat.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// A short human duration: `850ms`, `3.2s`, `2m05s`, `1h02m`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else if ms < 3_600_000 {
        let s = d.as_secs();
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        let m = d.as_secs() / 60;
        format!("{}h{:02}m", m / 60, m % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned_columns() {
        let mut t = Table::new(["ID", "STATUS"]);
        t.row(["a", "Completed"]);
        t.row(["longer-id", "Failed"]);
        assert_eq!(
            t.render(),
            "ID         STATUS\n---------  ---------\na          Completed\nlonger-id  Failed\n"
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn cuts_long_cells_and_pads_short_rows() {
        let mut t = Table::new(["A", "B"]).max_cell_width(5);
        t.row(["abcdefgh"]);
        let text = t.render();
        assert!(text.contains("abcd…"), "{text}");
        assert_eq!(cut("a\nb", 10), "a b");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(human_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(human_duration(Duration::from_millis(3250)), "3.2s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(human_duration(Duration::from_secs(3720)), "1h02m");
    }
}
