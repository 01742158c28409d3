//! Acquisition dates (`YYYY-MM-DD`) and the calendar years of a series.

/// Checks `YYYY-MM-DD` (a real calendar date).
pub fn parse_date(s: &str) -> Option<(i32, u32, u32)> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i32 = s[0..4].parse().ok()?;
    let m: u32 = s[5..7].parse().ok()?;
    let d: u32 = s[8..10].parse().ok()?;
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    ((1..=12).contains(&m) && d >= 1 && d <= days[m as usize - 1]).then_some((y, m, d))
}

/// The dates of each calendar year of the series, in order.
pub fn years_of(dates: &[String]) -> Vec<(i32, Vec<usize>)> {
    let mut years: Vec<(i32, Vec<usize>)> = Vec::new();
    for (i, d) in dates.iter().enumerate() {
        let year = parse_date(d).map_or(0, |(y, _, _)| y);
        match years.last_mut() {
            Some((y, list)) if *y == year => list.push(i),
            _ => years.push((year, vec![i])),
        }
    }
    years
}

/// `[input] start`/`end`: the acquisitions a run reads, both ends included
/// (`YYYY-MM-DD`, checked by the configuration); `None` leaves that side open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DateWindow {
    /// The first date read.
    pub start: Option<String>,
    /// The last date read.
    pub end: Option<String>,
}

impl DateWindow {
    /// Whether the window leaves out nothing.
    pub fn is_all(&self) -> bool {
        self.start.is_none() && self.end.is_none()
    }

    /// Whether an acquisition date (`YYYY-MM-DD`, or any string beginning with one)
    /// lies in the window. ISO dates compare as text.
    pub fn contains(&self, date: &str) -> bool {
        let day = date.get(..10).unwrap_or(date);
        self.start.as_deref().is_none_or(|s| day >= s) && self.end.as_deref().is_none_or(|e| day <= e)
    }

    /// `2018-08-01 … 2018-11-30`, `from 2018-08-01`, `until 2018-11-30` or `all dates`.
    pub fn describe(&self) -> String {
        match (&self.start, &self.end) {
            (Some(s), Some(e)) => format!("{s} … {e}"),
            (Some(s), None) => format!("from {s}"),
            (None, Some(e)) => format!("until {e}"),
            (None, None) => "all dates".into(),
        }
    }

    /// The error when no acquisition of `found` (sorted dates) lies in the window.
    pub fn nothing_in(&self, what: &str, found: &[String]) -> String {
        match (found.first(), found.last()) {
            (Some(first), _) if found.len() == 1 => {
                format!("{what}: no acquisition in the window [input] start/end = {}; its only acquisition is of {first}", self.describe())
            }
            (Some(first), Some(last)) => format!(
                "{what}: no acquisition in the window [input] start/end = {}; its {} acquisitions run from {first} to {last}",
                self.describe(),
                found.len()
            ),
            _ => format!("{what}: no acquisitions found"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_includes_both_ends_and_reads_datetimes_by_their_day() {
        let w = DateWindow { start: Some("2018-08-01".into()), end: Some("2018-11-30".into()) };
        assert!(w.contains("2018-08-01") && w.contains("2018-11-30") && w.contains("2018-11-30T10:56:31Z"));
        assert!(!w.contains("2018-07-31") && !w.contains("2018-12-01"));
        assert!(DateWindow::default().contains("1999-01-01") && DateWindow::default().is_all());
        let open_end = DateWindow { start: Some("2018-01-01".into()), end: None };
        assert!(open_end.contains("2030-01-01") && !open_end.contains("2017-12-31"));
        let msg = w.nothing_in("series/", &["2017-08-04".into(), "2017-09-01".into()]);
        assert_eq!(msg, "series/: no acquisition in the window [input] start/end = 2018-08-01 … 2018-11-30; its 2 acquisitions run from 2017-08-04 to 2017-09-01");
    }
}
