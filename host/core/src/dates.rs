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
