//! Plain aligned tables for people; scripts use `--json`.

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

#[cfg(test)]
mod tests {
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
