//! The meaningful tokens of one of tally's own statements (`CREATE DESTINATION`, `COPY ... TO
//! DESTINATION`, `CREATE ROUTE`, ...), with the original tokens kept so that an embedded
//! query's text can be cut out as written. Whitespace and semicolons are not meaningful:
//! statements arrive split, so a semicolon can only be the final one.

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::{Result, TallyError};

/// A syntax error in one of tally's statements.
pub fn syntax(message: impl Into<String>) -> TallyError {
    TallyError::syntax(format!("syntax error: {}", message.into()))
}

/// A statement's tokens, indexed by meaningful position.
pub struct Tokens {
    all: Vec<Token>,
    at: Vec<usize>,
}

impl Tokens {
    /// Tokenizes `text` as PostgreSQL does.
    pub fn new(text: &str) -> Result<Tokens> {
        let all = Tokenizer::new(&PostgreSqlDialect {}, text)
            .tokenize()
            .map_err(|e| syntax(e.to_string()))?;
        let at = all
            .iter()
            .enumerate()
            .filter(|(_, t)| !matches!(t, Token::Whitespace(_) | Token::SemiColon))
            .map(|(i, _)| i)
            .collect();
        Ok(Tokens { all, at })
    }

    /// Meaningful token `i`.
    pub fn tok(&self, i: usize) -> Option<&Token> {
        self.at.get(i).map(|&j| &self.all[j])
    }

    /// Whether the statement ends before token `i`.
    pub fn end(&self, i: usize) -> bool {
        self.tok(i).is_none()
    }

    /// Whether token `i` is the unquoted keyword `k`.
    pub fn kw(&self, i: usize, k: &str) -> bool {
        matches!(self.tok(i), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k))
    }

    /// Token `i` as an identifier, folded to lower case unless quoted.
    pub fn ident(&self, i: usize) -> Option<String> {
        match self.tok(i) {
            Some(Token::Word(w)) if w.quote_style.is_some() => Some(w.value.clone()),
            Some(Token::Word(w)) => Some(w.value.to_ascii_lowercase()),
            _ => None,
        }
    }

    /// Token `i` as a string literal.
    pub fn string(&self, i: usize) -> Option<String> {
        match self.tok(i) {
            Some(Token::SingleQuotedString(s)) => Some(s.clone()),
            _ => None,
        }
    }

    /// The index of the parenthesis closing the one at `i`.
    pub fn closing(&self, i: usize) -> Option<usize> {
        let mut depth = 0usize;
        for (k, &j) in self.at.iter().enumerate().skip(i) {
            match self.all[j] {
                Token::LParen => depth += 1,
                Token::RParen => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return Some(k);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// The original text strictly between meaningful tokens `from` and `to`.
    pub fn text_between(&self, from: usize, to: usize) -> String {
        self.all[self.at[from] + 1..self.at[to]]
            .iter()
            .map(|t| t.to_string())
            .collect::<String>()
            .trim()
            .to_string()
    }

    /// The original text from meaningful token `from` to the end, without a final `;`.
    pub fn rest(&self, from: usize) -> String {
        let Some(&start) = self.at.get(from) else {
            return String::new();
        };
        self.all[start..]
            .iter()
            .map(|t| t.to_string())
            .collect::<String>()
            .trim()
            .trim_end_matches(';')
            .trim()
            .to_string()
    }

    /// `[IF EXISTS] name [, ...]` from token `i` to the end of the statement, as every
    /// `DROP <object>` of tally's own statements takes it: the names and whether IF EXISTS
    /// was given. `usage` is the syntax error's text.
    pub fn drop_list(&self, mut i: usize, usage: &str) -> Result<(Vec<String>, bool)> {
        let if_exists = self.kw(i, "if") && self.kw(i + 1, "exists");
        if if_exists {
            i += 2;
        }
        let mut names = Vec::new();
        while let Some(n) = self.ident(i) {
            names.push(n);
            i += 1;
            if matches!(self.tok(i), Some(Token::Comma)) {
                i += 1;
            } else {
                break;
            }
        }
        if names.is_empty() || !self.end(i) {
            return Err(syntax(usage));
        }
        Ok((names, if_exists))
    }

    /// `(key = value, ...)` starting at the `(` at `i`; returns the options and the position
    /// after `)`.
    pub fn options(&self, mut i: usize) -> Result<(BTreeMap<String, String>, usize)> {
        if !matches!(self.tok(i), Some(Token::LParen)) {
            return Err(syntax("expected ( before the option list"));
        }
        i += 1;
        let mut out = BTreeMap::new();
        if matches!(self.tok(i), Some(Token::RParen)) {
            return Ok((out, i + 1));
        }
        loop {
            let key = self
                .ident(i)
                .ok_or_else(|| syntax("expected an option name"))?
                .to_ascii_lowercase();
            if !matches!(self.tok(i + 1), Some(Token::Eq)) {
                return Err(syntax(format!("expected = after option {key}")));
            }
            let value = match self.tok(i + 2) {
                Some(Token::SingleQuotedString(s)) => s.clone(),
                Some(Token::Number(n, _)) => n.clone(),
                Some(Token::Word(w)) => w.value.clone(),
                _ => {
                    return Err(syntax(format!(
                        "option {key} needs a value, like {key} = 'value'"
                    )));
                }
            };
            if out.insert(key.clone(), value).is_some() {
                return Err(syntax(format!("option {key} is given twice")));
            }
            i += 3;
            match self.tok(i) {
                Some(Token::Comma) => i += 1,
                Some(Token::RParen) => return Ok((out, i + 1)),
                _ => return Err(syntax("expected , or ) in the option list")),
            }
        }
    }
}
