//! Plain aligned tables for people and CSV for spreadsheets: the one renderer of every report.

/// Prints `rows` under `header`, numbers right-aligned.
pub fn print(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", render(header, rows));
}

pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let numeric: Vec<bool> = (0..header.len())
        .map(|i| {
            // Blank cells (not applicable) do not make a column of numbers text.
            rows.iter().any(|r| r.get(i).is_some_and(|c| !c.is_empty()))
                && rows.iter().all(|r| {
                    r.get(i)
                        .is_some_and(|c| c.is_empty() || c.parse::<tally_core::Credits>().is_ok())
                })
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i > 0 {
                out.push_str("  ");
            }
            if numeric[i] {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                if i + 1 < cells.len() {
                    out.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header.to_vec());
    out.push_str(&line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `rows` under `header` as CSV (RFC 4180: fields with commas, quotes or line breaks are
/// quoted); cells that a spreadsheet would run as a formula are prefixed with `'`.
pub fn csv(header: &[&str], rows: &[Vec<String>]) -> String {
    let field = |cell: &str| {
        let cell = if cell.starts_with(['=', '+', '@', '\t', '\r'])
            || (cell.starts_with('-') && cell.parse::<tally_core::Credits>().is_err())
        {
            format!("'{cell}")
        } else {
            cell.to_string()
        };
        if cell.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", cell.replace('"', "\"\""))
        } else {
            cell
        }
    };
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    };
    line(header.iter().map(|h| field(h)).collect());
    for row in rows {
        line(row.iter().map(|c| field(c)).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let text = super::csv(
            &["user", "credits"],
            &[
                vec!["kim, \"k\"".into(), "-1.5".into()],
                vec!["=cmd()".into(), "3".into()],
            ],
        );
        assert_eq!(
            text,
            "user,credits\r\n\"kim, \"\"k\"\"\",-1.5\r\n'=cmd(),3\r\n"
        );
    }

    #[test]
    fn aligns_columns_and_right_aligns_numbers() {
        let text = super::render(
            &["day", "account", "credits"],
            &[
                vec!["2026-11-20".into(), "acme".into(), "12.5".into()],
                vec!["2026-11-21".into(), "globex-kr".into(), "3".into()],
            ],
        );
        assert_eq!(
            text,
            "day         account    credits\n----------  ---------  -------\n\
             2026-11-20  acme          12.5\n2026-11-21  globex-kr        3\n"
        );
    }
}
