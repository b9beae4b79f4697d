//! A small reader for quoted CSV/TSV (RFC 4180: fields may be wrapped in `"`, a quote inside a
//! quoted field is doubled, and a quoted field may span lines). Used for the files that upstream
//! publishes in that form: BBQ's `additional_metadata.csv` (written by R) and the RTE source TSV
//! (written by pandas). GLUE's own TSVs must *not* go through it: their quotes are literal.

/// Parse `text` into rows of fields. An unterminated quoted field is an error naming the line
/// where it started (1-based).
pub fn parse(text: &str, delimiter: char) -> Result<Vec<Vec<String>>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let mut row: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    let mut quoted_from: Option<usize> = None;
    // Whether the current row has any content (so a trailing newline adds no empty row).
    let mut started = false;
    while let Some(c) = chars.next() {
        if quoted_from.is_some() {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted_from = None,
                _ => {
                    if c == '\n' {
                        line += 1;
                    }
                    field.push(c);
                }
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => {
                quoted_from = Some(line);
                started = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                line += 1;
                if started || !field.is_empty() {
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                started = false;
            }
            c if c == delimiter => {
                row.push(std::mem::take(&mut field));
                started = true;
            }
            _ => {
                field.push(c);
                started = true;
            }
        }
    }
    if let Some(start) = quoted_from {
        return Err(format!("line {start}: quoted field is never closed"));
    }
    if started || !field.is_empty() {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn quotes_doubled_quotes_and_multiline_fields() {
        let rows = parse("a,b,c\n\"x, y\",\"say \"\"hi\"\"\",\"two\n lines\"\r\n1,,3\n", ',').unwrap();
        assert_eq!(rows, vec![vec!["a", "b", "c"], vec!["x, y", "say \"hi\"", "two\n lines"], vec!["1", "", "3"]]);
        assert_eq!(parse("a\tb", '\t').unwrap(), vec![vec!["a", "b"]]);
        assert!(parse("a\n\"open\n", ',').unwrap_err().contains("line 2"));
    }
}
