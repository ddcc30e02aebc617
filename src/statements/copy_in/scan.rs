//! Splits COPY input into records and fields, byte by byte, with PostgreSQL's rules for the
//! text format (backslash escapes, `\.` end marker) and CSV (quotes, escapes, records that
//! span lines), and its end-of-line rules (`\n`, `\r\n` or `\r`, fixed by the first line).
//!
//! A hand-written scanner rather than the `csv` crate: COPY's text format is not CSV, CSV
//! needs PostgreSQL's exact quote/escape and end-marker behaviour, and the scanner records
//! field spans into a reused vector without copying, which is what makes loading fast.
//! Fields come back as spans of the input; only fields that contain escapes or quotes are
//! decoded (into a scratch buffer) by [`Scanner::decode`].

/// Which COPY format, with its options.
#[derive(Debug, Clone)]
pub struct Dialect {
    /// CSV rather than PostgreSQL's text format.
    pub csv: bool,
    /// Field delimiter.
    pub delimiter: u8,
    /// CSV quote character.
    pub quote: u8,
    /// CSV escape character (inside quotes).
    pub escape: u8,
    /// The NULL marker, compared with a field's raw text.
    pub null: Vec<u8>,
}

/// A field of the record just scanned, as a span of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// The raw bytes are the value: no backslash (text) or quote (CSV) inside.
    pub plain: bool,
    /// CSV: part of the field was quoted, so it is never NULL.
    pub quoted: bool,
}

/// What [`Scanner::scan`] found at the given position.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A whole record; the next one starts at `next`.
    Record {
        /// Where the next record starts.
        next: usize,
    },
    /// The end-of-data marker `\.`. In text format the data before it on its line is a last
    /// record (`record` is true and the fields are set), as PostgreSQL reads it.
    End {
        /// The fields hold a last record.
        record: bool,
    },
    /// The record goes on past the end of the input seen so far.
    Incomplete,
}

/// Input that is not valid COPY data (SQLSTATE 22P04).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// `\.` followed by something other than the end of the line.
    #[error("end-of-copy marker corrupt")]
    CorruptEndMarker,
    /// A carriage return where the first line fixed another line ending.
    #[error("literal carriage return found in data")]
    LiteralCr,
    /// A newline where the first line fixed another line ending.
    #[error("literal newline found in data")]
    LiteralNl,
    /// CSV: an unquoted carriage return where the first line fixed another line ending.
    #[error("unquoted carriage return found in data")]
    UnquotedCr,
    /// CSV: an unquoted newline where the first line fixed another line ending.
    #[error("unquoted newline found in data")]
    UnquotedNl,
    /// CSV: the input ended inside quotes.
    #[error("unterminated CSV quoted field")]
    UnterminatedQuote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eol {
    Unknown,
    Nl,
    CrNl,
    Cr,
}

/// Finds records and fields; remembers the line ending the first line used.
pub struct Scanner {
    dialect: Dialect,
    /// Bytes that end an unquoted run: the delimiter, `\n`, `\r`, and the quote (CSV) or
    /// backslash (text).
    special: [bool; 256],
    eol: Eol,
}

impl Scanner {
    /// A scanner for `dialect`.
    pub fn new(dialect: Dialect) -> Scanner {
        let mut special = [false; 256];
        special[usize::from(dialect.delimiter)] = true;
        special[usize::from(b'\n')] = true;
        special[usize::from(b'\r')] = true;
        if dialect.csv {
            special[usize::from(dialect.quote)] = true;
        } else {
            special[usize::from(b'\\')] = true;
        }
        Scanner {
            dialect,
            special,
            eol: Eol::Unknown,
        }
    }

    /// Whether a field is the NULL marker.
    pub fn is_null(&self, buf: &[u8], f: &Field) -> bool {
        !f.quoted && buf[f.start..f.end] == self.dialect.null[..]
    }

    /// Scans the record at `buf[start..]` into `fields`. `eof` says no more input follows
    /// `buf`; without it a record that reaches the end of `buf` is [`Step::Incomplete`] and
    /// nothing is remembered from the attempt.
    pub fn scan(
        &mut self,
        buf: &[u8],
        start: usize,
        eof: bool,
        fields: &mut Vec<Field>,
    ) -> Result<Step, FormatError> {
        fields.clear();
        if self.dialect.csv {
            self.scan_csv(buf, start, eof, fields)
        } else {
            self.scan_text(buf, start, eof, fields)
        }
    }

    fn scan_text(
        &mut self,
        buf: &[u8],
        start: usize,
        eof: bool,
        fields: &mut Vec<Field>,
    ) -> Result<Step, FormatError> {
        let n = buf.len();
        let delimiter = self.dialect.delimiter;
        let mut i = start;
        let mut field_start = start;
        let mut plain = true;
        loop {
            while i < n && !self.special[usize::from(buf[i])] {
                i += 1;
            }
            if i >= n {
                if !eof {
                    return Ok(Step::Incomplete);
                }
                push(fields, field_start, n, plain, false);
                return Ok(Step::Record { next: n });
            }
            let c = buf[i];
            if c == delimiter {
                push(fields, field_start, i, plain, false);
                i += 1;
                field_start = i;
                plain = true;
                continue;
            }
            match c {
                b'\\' => {
                    if i + 1 >= n {
                        if !eof {
                            return Ok(Step::Incomplete);
                        }
                        // A backslash at the very end escapes nothing; decoding drops it.
                        i += 1;
                        plain = false;
                        continue;
                    }
                    if buf[i + 1] == b'.' {
                        if i + 2 >= n && !eof {
                            return Ok(Step::Incomplete);
                        }
                        return match buf.get(i + 2) {
                            None | Some(b'\n' | b'\r') => {
                                let record = i > start;
                                if record {
                                    push(fields, field_start, i, plain, false);
                                }
                                Ok(Step::End { record })
                            }
                            Some(_) => Err(FormatError::CorruptEndMarker),
                        };
                    }
                    // The escaped byte, even a newline, belongs to the field.
                    plain = false;
                    i += 2;
                }
                _ => {
                    let Some(next) = self.line_end(buf, i, eof, false)? else {
                        return Ok(Step::Incomplete);
                    };
                    push(fields, field_start, i, plain, false);
                    return Ok(Step::Record { next });
                }
            }
        }
    }

    fn scan_csv(
        &mut self,
        buf: &[u8],
        start: usize,
        eof: bool,
        fields: &mut Vec<Field>,
    ) -> Result<Step, FormatError> {
        let n = buf.len();
        let Dialect {
            delimiter,
            quote,
            escape,
            ..
        } = self.dialect;
        if buf.get(start) == Some(&b'\\') {
            if start + 2 >= n && !eof {
                return Ok(Step::Incomplete);
            }
            if buf.get(start + 1) == Some(&b'.')
                && matches!(buf.get(start + 2), None | Some(b'\n' | b'\r'))
            {
                return Ok(Step::End { record: false });
            }
        }
        let mut i = start;
        let mut field_start = start;
        let mut plain = true;
        let mut quoted = false;
        loop {
            while i < n && !self.special[usize::from(buf[i])] {
                i += 1;
            }
            if i >= n {
                if !eof {
                    return Ok(Step::Incomplete);
                }
                push(fields, field_start, n, plain, quoted);
                return Ok(Step::Record { next: n });
            }
            let c = buf[i];
            if c == delimiter {
                push(fields, field_start, i, plain, quoted);
                i += 1;
                field_start = i;
                plain = true;
                quoted = false;
                continue;
            }
            if c == quote {
                plain = false;
                quoted = true;
                i += 1;
                loop {
                    match memchr::memchr2(quote, escape, &buf[i..]) {
                        None => {
                            return if eof {
                                Err(FormatError::UnterminatedQuote)
                            } else {
                                Ok(Step::Incomplete)
                            };
                        }
                        Some(k) => i += k,
                    }
                    if buf[i] == escape {
                        match buf.get(i + 1) {
                            None if !eof => return Ok(Step::Incomplete),
                            Some(&next) if next == quote || next == escape => {
                                i += 2;
                                continue;
                            }
                            _ => {}
                        }
                    }
                    i += 1;
                    if buf[i - 1] == quote {
                        break;
                    }
                }
                continue;
            }
            let Some(next) = self.line_end(buf, i, eof, true)? else {
                return Ok(Step::Incomplete);
            };
            push(fields, field_start, i, plain, quoted);
            return Ok(Step::Record { next });
        }
    }

    /// At a `\n` or `\r` that ends a record: checks it against the line ending of the first
    /// line (fixing it on the first line) and returns where the next record starts, or
    /// `None` when a `\r` is the last byte seen and a `\n` may follow.
    fn line_end(
        &mut self,
        buf: &[u8],
        i: usize,
        eof: bool,
        csv: bool,
    ) -> Result<Option<usize>, FormatError> {
        let (bad_cr, bad_nl) = if csv {
            (FormatError::UnquotedCr, FormatError::UnquotedNl)
        } else {
            (FormatError::LiteralCr, FormatError::LiteralNl)
        };
        if buf[i] == b'\n' {
            return match self.eol {
                Eol::Unknown | Eol::Nl => {
                    self.eol = Eol::Nl;
                    Ok(Some(i + 1))
                }
                Eol::Cr | Eol::CrNl => Err(bad_nl),
            };
        }
        if i + 1 >= buf.len() && !eof {
            return Ok(None);
        }
        let crnl = buf.get(i + 1) == Some(&b'\n');
        match (self.eol, crnl) {
            (Eol::Unknown, true) | (Eol::CrNl, true) => {
                self.eol = Eol::CrNl;
                Ok(Some(i + 2))
            }
            (Eol::Unknown, false) | (Eol::Cr, false) => {
                self.eol = Eol::Cr;
                Ok(Some(i + 1))
            }
            (Eol::Cr, true) => Err(bad_nl),
            (Eol::Nl, _) | (Eol::CrNl, false) => Err(bad_cr),
        }
    }

    /// Decodes a field that is not [`Field::plain`] into `out`: text-format backslash
    /// escapes, or CSV quotes and escapes. Returns true when an escape produced a byte that
    /// may break UTF-8 or is NUL, so the caller must check `out`.
    pub fn decode(&self, raw: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        if self.dialect.csv {
            self.decode_csv(raw, out);
            false
        } else {
            decode_text(raw, out)
        }
    }

    fn decode_csv(&self, raw: &[u8], out: &mut Vec<u8>) {
        let Dialect { quote, escape, .. } = self.dialect;
        let mut i = 0;
        while i < raw.len() {
            let c = raw[i];
            i += 1;
            if c != quote {
                out.push(c);
                continue;
            }
            while i < raw.len() {
                let c = raw[i];
                i += 1;
                if c == escape
                    && let Some(&next) = raw.get(i)
                    && (next == quote || next == escape)
                {
                    out.push(next);
                    i += 1;
                    continue;
                }
                if c == quote {
                    break;
                }
                out.push(c);
            }
        }
    }
}

fn push(fields: &mut Vec<Field>, start: usize, end: usize, plain: bool, quoted: bool) {
    fields.push(Field {
        start,
        end,
        plain,
        quoted,
    });
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// PostgreSQL's text-format escapes: `\b \f \n \r \t \v`, up to three octal digits, `\x`
/// and one or two hex digits; any other escaped byte stands for itself.
fn decode_text(raw: &[u8], out: &mut Vec<u8>) -> bool {
    let mut check = false;
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = raw.get(i) else { break };
        i += 1;
        let v = match e {
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                let b = (v & 0xff) as u8;
                check |= b == 0 || b >= 0x80;
                b
            }
            b'x' => match raw.get(i).and_then(|d| hex(*d)) {
                Some(h) => {
                    i += 1;
                    let mut v = h;
                    if let Some(l) = raw.get(i).and_then(|d| hex(*d)) {
                        v = v * 16 + l;
                        i += 1;
                    }
                    check |= v == 0 || v >= 0x80;
                    v
                }
                None => b'x',
            },
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 0x0b,
            other => other,
        };
        out.push(v);
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text() -> Scanner {
        Scanner::new(Dialect {
            csv: false,
            delimiter: b'\t',
            quote: b'"',
            escape: b'"',
            null: b"\\N".to_vec(),
        })
    }

    fn csv() -> Scanner {
        Scanner::new(Dialect {
            csv: true,
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: Vec::new(),
        })
    }

    /// Every record of `input` as decoded fields (None for NULL), or the first error.
    fn records(s: &mut Scanner, input: &[u8]) -> Result<Vec<Vec<Option<String>>>, FormatError> {
        let mut out = Vec::new();
        let mut fields = Vec::new();
        let mut pos = 0;
        let mut scratch = Vec::new();
        while pos < input.len() {
            let step = s.scan(input, pos, true, &mut fields)?;
            let next = match step {
                Step::Record { next } => Some(next),
                Step::End { record } => {
                    if !record {
                        break;
                    }
                    None
                }
                Step::Incomplete => unreachable!("eof"),
            };
            out.push(
                fields
                    .iter()
                    .map(|f| {
                        if s.is_null(input, f) {
                            None
                        } else if f.plain {
                            Some(String::from_utf8_lossy(&input[f.start..f.end]).to_string())
                        } else {
                            s.decode(&input[f.start..f.end], &mut scratch);
                            Some(String::from_utf8_lossy(&scratch).to_string())
                        }
                    })
                    .collect(),
            );
            match next {
                Some(n) => pos = n,
                None => break,
            }
        }
        Ok(out)
    }

    fn row(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|x| x.map(str::to_string)).collect()
    }

    #[test]
    fn text_escapes_nulls_and_end_marker() {
        let r = records(
            &mut text(),
            b"a\\tb\t\\N\t\\\\N\n\\101\\x41\\x4g\\q\t\t\\.x\\\nnext\n\\.\nignored\n",
        );
        assert_eq!(r, Err(FormatError::CorruptEndMarker));
        let r = records(
            &mut text(),
            b"a\\tb\t\\N\t\\\\N\n\\101\\x41\\x4g\\q\t\tx\\\nnext\n\\.\nignored\n",
        )
        .unwrap();
        assert_eq!(
            r,
            vec![
                row(&[Some("a\tb"), None, Some("\\N")]),
                row(&[Some("AA\u{4}gq"), Some(""), Some("x\nnext")]),
            ]
        );
        // Data before `\.` on its line is a last record.
        let r = records(&mut text(), b"1\n2\\.\n3\n").unwrap();
        assert_eq!(r, vec![row(&[Some("1")]), row(&[Some("2")])]);
        // An empty line is one empty field.
        let r = records(&mut text(), b"\n").unwrap();
        assert_eq!(r, vec![row(&[Some("")])]);
    }

    #[test]
    fn text_escapes_that_break_utf8_ask_for_a_check() {
        let mut out = Vec::new();
        assert!(decode_text(b"\\303", &mut out));
        assert!(decode_text(b"\\0", &mut out));
        out.clear();
        assert!(!decode_text(b"\\101\\n", &mut out));
        assert_eq!(out, b"A\n");
    }

    #[test]
    fn csv_quotes_escapes_and_multiline_records() {
        let r = records(
            &mut csv(),
            b"1,\"a,\"\"b\"\"\",,\"\"\n2,\"line\nbreak\",x\"y\"z,\"\\.\"\n",
        )
        .unwrap();
        assert_eq!(
            r,
            vec![
                row(&[Some("1"), Some("a,\"b\""), None, Some("")]),
                row(&[Some("2"), Some("line\nbreak"), Some("xyz"), Some("\\.")]),
            ]
        );
        assert_eq!(
            records(&mut csv(), b"1,\"open\n"),
            Err(FormatError::UnterminatedQuote)
        );
        let r = records(&mut csv(), b"1\n\\.\n2\n").unwrap();
        assert_eq!(r, vec![row(&[Some("1")])]);
        // `\.` that is not alone on its line is data.
        let r = records(&mut csv(), b"\\.x\n").unwrap();
        assert_eq!(r, vec![row(&[Some("\\.x")])]);
    }

    #[test]
    fn csv_with_a_distinct_escape() {
        let mut s = Scanner::new(Dialect {
            csv: true,
            delimiter: b';',
            quote: b'\'',
            escape: b'\\',
            null: b"NULL".to_vec(),
        });
        let r = records(&mut s, b"'it\\'s';'a\\\\b';NULL;'NULL';'x\\y'\n").unwrap();
        assert_eq!(
            r,
            vec![row(&[
                Some("it's"),
                Some("a\\b"),
                None,
                Some("NULL"),
                Some("x\\y")
            ])]
        );
    }

    #[test]
    fn line_endings_follow_the_first_line() {
        let r = records(&mut csv(), b"1,a\r\n2,\"b\r\nc\"\r\n").unwrap();
        assert_eq!(
            r,
            vec![
                row(&[Some("1"), Some("a")]),
                row(&[Some("2"), Some("b\r\nc")])
            ]
        );
        let r = records(&mut text(), b"1\r2\r").unwrap();
        assert_eq!(r, vec![row(&[Some("1")]), row(&[Some("2")])]);
        assert_eq!(
            records(&mut text(), b"1\n2\r\n"),
            Err(FormatError::LiteralCr)
        );
        assert_eq!(
            records(&mut text(), b"1\r\n2\n"),
            Err(FormatError::LiteralNl)
        );
        assert_eq!(
            records(&mut csv(), b"1\r\n2\n"),
            Err(FormatError::UnquotedNl)
        );
        assert_eq!(
            records(&mut csv(), b"1\n2\r3\n"),
            Err(FormatError::UnquotedCr)
        );
    }

    #[test]
    fn records_cut_anywhere_are_incomplete_until_they_end() {
        let input: &[u8] = b"1,\"a\"\"b\",c\r\n2,\"x\ny\",z\r\n";
        let mut fields = Vec::new();
        for cut in 0..input.len() {
            let mut s = csv();
            let step = s.scan(&input[..cut], 0, false, &mut fields).unwrap();
            let first_end = 12;
            if cut < first_end {
                assert_eq!(step, Step::Incomplete, "cut at {cut}");
            } else {
                assert_eq!(step, Step::Record { next: first_end }, "cut at {cut}");
            }
        }
        let mut s = text();
        let input: &[u8] = b"a\\\tb\\.";
        for cut in 0..=input.len() {
            let step = s.scan(&input[..cut], 0, false, &mut fields).unwrap();
            assert_eq!(step, Step::Incomplete, "cut at {cut}");
        }
    }
}
