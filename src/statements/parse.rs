//! Parsing in front of DataFusion's parser: the query string is split into statements,
//! tally's own statements are recognised by their first words, and the rest go through
//! sqlparser's PostgreSQL dialect with datafusion-pg-catalog's compatibility rewrites (the
//! queries psql, DBeaver and friends send about pg_catalog). Nothing here forks a parser.

use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;

use crate::error::{Result, TallyError};

/// A parsed statement.
#[derive(Debug, Clone)]
pub enum TallyStatement {
    /// A PostgreSQL statement, after compatibility rewrites.
    Sql(Box<Statement>),
    /// `CREATE EXTERNAL TABLE` (DataFusion's syntax), kept with its text for the catalog.
    CreateExternalTable {
        /// The statement text, stored in the catalog and re-planned on use.
        sql: String,
        /// The parsed statement.
        stmt: Box<DFStatement>,
    },
    /// `CREATE USER name [WITH] [PASSWORD 'p'] [SUPERUSER]` (also `CREATE ROLE`).
    CreateUser {
        /// User name.
        name: String,
        /// Password, if given.
        password: Option<String>,
        /// SUPERUSER given.
        superuser: bool,
    },
    /// `ALTER USER name [WITH] PASSWORD 'p' | SUPERUSER | NOSUPERUSER`.
    AlterUser {
        /// User name.
        name: String,
        /// New password.
        password: Option<String>,
        /// New superuser flag.
        superuser: Option<bool>,
    },
    /// `CREATE SOURCE`, `ALTER SOURCE ... ROTATE WRITE KEY`, `DROP SOURCE`.
    Source(crate::collect::sources::SourceStatement),
    /// `CREATE [OR REPLACE] | DROP TRACKING PLAN`.
    TrackingPlan(crate::collect::plans::statements::PlanStatement),
    /// `CREATE | REFRESH | DROP IDENTITY GRAPH`.
    IdentityGraph(crate::identity::statements::GraphStatement),
    /// `CREATE | ALTER | DROP DESTINATION` and `COPY ... TO DESTINATION`.
    Activate(crate::activate::statements::ActivateStatement),
    /// `CREATE SYNC ... AS COPY ...`, `RUN SYNC`, `DROP SYNC`.
    Sync(crate::activate::syncs::SyncStatement),
    /// `CREATE | ALTER | DROP | REPLAY ROUTE`.
    Route(crate::route::statements::RouteStatement),
    /// `CREATE | ALTER | DROP SECRET`.
    Secret(crate::secrets::SecretStatement),
    /// `CREATE | ALTER | DROP CONNECTION`.
    Connection(crate::connections::ConnectionStatement),
    /// `DROP USER [IF EXISTS] name [, ...]`.
    DropUser {
        /// User names.
        names: Vec<String>,
        /// IF EXISTS given.
        if_exists: bool,
    },
}

impl TallyStatement {
    /// Whether the statement ends a transaction block (allowed in a failed transaction).
    pub fn ends_transaction(&self) -> bool {
        matches!(
            self,
            TallyStatement::Sql(s) if matches!(**s, Statement::Commit { .. } | Statement::Rollback { .. })
        )
    }
}

/// One statement of a query string.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The statement.
    pub stmt: TallyStatement,
    /// Its source text.
    pub text: String,
}

/// Parses a whole query string. Like PostgreSQL, a syntax error anywhere means nothing runs.
pub fn parse(sql: &str) -> Result<Vec<Parsed>> {
    let compat = compat_parser();
    let mut out = Vec::new();
    for (offset, text) in split_statements(sql) {
        let stmt = parse_one(compat, text).map_err(|e| match e {
            TallyError::Syntax {
                message,
                position: Some(p),
            } => TallyError::Syntax {
                message,
                position: Some(p + sql[..offset].chars().count()),
            },
            other => other,
        })?;
        out.push(Parsed {
            stmt,
            text: text.to_string(),
        });
    }
    Ok(out)
}

/// Whether `text` reads the system catalogs (a `pg_*` relation or function, or
/// `information_schema`): the introspection queries of psql, drivers and BI tools, for which
/// datafusion-pg-catalog's whole rewrite set (known-query substitutions included) is made.
fn is_catalog_query(text: &str) -> bool {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, text).tokenize() else {
        return true;
    };
    tokens.iter().any(|t| match t {
        Token::Word(w) if w.quote_style.is_none() => {
            let v = w.value.to_ascii_lowercase();
            v.starts_with("pg_") || v == "information_schema"
        }
        _ => false,
    })
}

/// datafusion-pg-catalog's rewrites that are right for any statement. Its
/// `RemoveSubqueryFromProjection` is left out: it replaces a correlated scalar subquery in
/// a select list with NULL and caps an uncorrelated one at one row, which psql's catalog
/// queries tolerate but which turns a user's `(SELECT count(*) ... WHERE i.k = o.k)` into
/// a column of NULLs without a word.
fn general_rewrites(stmt: Statement) -> Statement {
    use datafusion_pg_catalog::sql::rules::{
        AliasDuplicatedProjectionRewrite, CurrentUserVariableToSessionUserFunctionCall,
        FixArrayLiteral, FixVersionColumnName, ResolveUnqualifiedIdentifier,
        RewriteArrayAnyAllOperation, RewritePgCatalogOperator, RewriteRegCastToSubquery,
        SqlStatementRewriteRule, StripCallableQualifier, StripCollate,
    };
    static RULES: std::sync::OnceLock<Vec<Box<dyn SqlStatementRewriteRule>>> =
        std::sync::OnceLock::new();
    let rules = RULES.get_or_init(|| {
        vec![
            Box::new(AliasDuplicatedProjectionRewrite),
            Box::new(ResolveUnqualifiedIdentifier),
            Box::new(RewriteArrayAnyAllOperation),
            Box::new(StripCallableQualifier),
            Box::new(FixArrayLiteral),
            Box::new(CurrentUserVariableToSessionUserFunctionCall),
            Box::new(StripCollate),
            Box::new(RewritePgCatalogOperator),
            Box::new(RewriteRegCastToSubquery::new()),
            Box::new(FixVersionColumnName),
        ]
    });
    rules.iter().fold(stmt, |s, rule| rule.rewrite(s))
}

fn compat_parser() -> &'static PostgresCompatibilityParser {
    static P: std::sync::OnceLock<PostgresCompatibilityParser> = std::sync::OnceLock::new();
    P.get_or_init(PostgresCompatibilityParser::new)
}

fn leading_words(text: &str, n: usize) -> Vec<String> {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, text).tokenize() else {
        return vec![];
    };
    tokens
        .into_iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some(Some(w.value.to_ascii_uppercase())),
            Token::Whitespace(_) => None,
            _ => Some(None),
        })
        .take(n)
        .map(|w| w.unwrap_or_default())
        .collect()
}

fn parse_one(compat: &PostgresCompatibilityParser, text: &str) -> Result<TallyStatement> {
    let words = leading_words(text, 3);
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    if w(0) == "CREATE" && (w(1) == "EXTERNAL" || (w(1) == "UNBOUNDED" && w(2) == "EXTERNAL")) {
        let mut parser = DFParserBuilder::new(text)
            .with_dialect(&PostgreSqlDialect {})
            .build()
            .map_err(|e| syntax_error(&e.to_string()))?;
        let stmt = parser
            .parse_statement()
            .map_err(|e| syntax_error(&e.to_string()))?;
        return Ok(TallyStatement::CreateExternalTable {
            sql: text.trim().to_string(),
            stmt: Box::new(stmt),
        });
    }
    let object = if w(0) == "CREATE" && w(1) == "OR" && w(2) == "REPLACE" {
        leading_words(text, 4).get(3).cloned().unwrap_or_default()
    } else {
        w(1).to_string()
    };
    if matches!(w(0), "CREATE" | "ALTER" | "DROP") && object == "SECRET" {
        return crate::secrets::parse(text).map(TallyStatement::Secret);
    }
    if matches!(w(0), "CREATE" | "ALTER" | "DROP") && object == "CONNECTION" {
        return crate::connections::parse(text).map(TallyStatement::Connection);
    }
    if w(1) == "SOURCE" && matches!(w(0), "CREATE" | "ALTER" | "DROP") {
        return crate::collect::sources::parse(text).map(TallyStatement::Source);
    }
    if matches!(w(0), "CREATE" | "DROP")
        && matches!(w(1), "TRACKING" | "OR")
        && crate::collect::plans::statements::matches(text)
    {
        return crate::collect::plans::statements::parse(text).map(TallyStatement::TrackingPlan);
    }
    if w(1) == "IDENTITY" && w(2) == "GRAPH" && matches!(w(0), "CREATE" | "REFRESH" | "DROP") {
        return crate::identity::statements::parse(text).map(TallyStatement::IdentityGraph);
    }
    if (w(1) == "DESTINATION" && matches!(w(0), "CREATE" | "ALTER" | "DROP"))
        || (w(0) == "COPY" && crate::activate::statements::is_copy_to_destination(text))
    {
        return crate::activate::statements::parse(text).map(TallyStatement::Activate);
    }
    if w(1) == "ROUTE" && matches!(w(0), "CREATE" | "ALTER" | "DROP" | "REPLAY") {
        return crate::route::statements::parse(text).map(TallyStatement::Route);
    }
    if w(1) == "SYNC" && matches!(w(0), "CREATE" | "ALTER" | "RUN" | "DROP") {
        return crate::activate::syncs::parse(text).map(TallyStatement::Sync);
    }
    if matches!(w(1), "USER" | "ROLE") && matches!(w(0), "CREATE" | "ALTER" | "DROP") {
        return parse_user(text);
    }
    if w(0) == "COMMENT"
        && let Some(plain) = dollar_quotes_to_literals(text)
    {
        return parse_one(compat, &plain);
    }
    if let Some(substitute) = crate::engine::pg_queries::substitute(text) {
        return parse_one(compat, substitute);
    }
    if let Some(replaced) = crate::engine::pg_queries::replace_text(text) {
        return parse_one(compat, &replaced);
    }
    let parsed = if is_catalog_query(text) {
        compat.parse(text)
    } else {
        Parser::parse_sql(&PostgreSqlDialect {}, text)
            .map(|stmts| stmts.into_iter().map(general_rewrites).collect())
    };
    let mut stmts = parsed.map_err(|_| {
        // The compatibility parser loses token positions; parse again for the message.
        match Parser::parse_sql(&PostgreSqlDialect {}, text) {
            Err(e) => syntax_error_at(text, &e.to_string()),
            Ok(_) => syntax_error("syntax error"),
        }
    })?;
    match stmts.len() {
        1 => {
            let mut stmt = stmts.remove(0);
            super::rewrite::like_escape(&mut stmt);
            super::rewrite::composite_field_access(&mut stmt);
            super::rewrite::alias_column_casts(&mut stmt);
            super::rewrite::name_scalar_subqueries(&mut stmt);
            crate::engine::pg_queries::rewrite(&mut stmt);
            super::rewrite::aggregate_catalog_subqueries(&mut stmt);
            crate::collect::table_fn::positional_args(&mut stmt)?;
            Ok(TallyStatement::Sql(Box::new(stmt)))
        }
        _ => Err(syntax_error("cannot parse statement")),
    }
}

/// The statement with every dollar-quoted string (`$tag$...$tag$`) written as a standard
/// string literal, or `None` when it has none. sqlparser accepts dollar quotes only where an
/// expression is expected, but PostgreSQL takes them wherever a string literal goes, and dbt
/// writes `COMMENT ON ... IS $dbt_comment_literal_block$...$dbt_comment_literal_block$`.
fn dollar_quotes_to_literals(text: &str) -> Option<String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, text)
        .tokenize()
        .ok()?;
    if !tokens
        .iter()
        .any(|t| matches!(t, Token::DollarQuotedString(_)))
    {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    for t in tokens {
        match t {
            Token::DollarQuotedString(d) => {
                out.push('\'');
                out.push_str(&d.value.replace('\'', "''"));
                out.push('\'');
            }
            Token::SingleQuotedString(s) => {
                out.push('\'');
                out.push_str(&s.replace('\'', "''"));
                out.push('\'');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    Some(out)
}

fn syntax_error(message: &str) -> TallyError {
    TallyError::Syntax {
        message: clean_message(message),
        position: None,
    }
}

fn clean_message(message: &str) -> String {
    let m = message
        .trim_start_matches("sql parser error: ")
        .trim_start_matches("SQL error: ParserError(\"")
        .trim_end_matches("\")");
    let m = match m.find(" at Line: ") {
        Some(i) => &m[..i],
        None => m,
    };
    format!("syntax error: {m}")
}

/// Turns sqlparser's "at Line: L, Column: C" into PostgreSQL's 1-based character position.
fn syntax_error_at(text: &str, message: &str) -> TallyError {
    let position = message.find("Line: ").and_then(|i| {
        let rest = &message[i + 6..];
        let (line, rest) = rest.split_once(", Column: ")?;
        let col: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let (line, col) = (
            line.trim().parse::<usize>().ok()?,
            col.parse::<usize>().ok()?,
        );
        let before: usize = text
            .split('\n')
            .take(line.saturating_sub(1))
            .map(|l| l.chars().count() + 1)
            .sum();
        Some(before + col)
    });
    TallyError::Syntax {
        message: clean_message(message),
        position,
    }
}

fn parse_user(text: &str) -> Result<TallyStatement> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize()
        .map_err(|e| syntax_error(&e.to_string()))?;
    let toks: Vec<Token> = tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::SemiColon))
        .collect();
    let word = |t: &Token| match t {
        Token::Word(w) => Some(if w.quote_style.is_some() {
            w.value.clone()
        } else {
            w.value.to_ascii_lowercase()
        }),
        _ => None,
    };
    let verb = toks.first().and_then(word).unwrap_or_default();
    let mut i = 2;
    if verb == "drop" {
        let mut if_exists = false;
        if toks.get(i).and_then(word).as_deref() == Some("if") {
            if_exists = true;
            i += 2;
        }
        let names: Vec<String> = toks[i.min(toks.len())..].iter().filter_map(word).collect();
        if names.is_empty() {
            return Err(syntax_error("DROP USER needs a user name"));
        }
        return Ok(TallyStatement::DropUser { names, if_exists });
    }
    let name = toks
        .get(i)
        .and_then(word)
        .ok_or_else(|| syntax_error("expected a user name"))?;
    i += 1;
    let (mut password, mut superuser) = (None, None);
    while i < toks.len() {
        match word(&toks[i]).as_deref() {
            Some("with") | Some("login") | Some("nologin") | Some("inherit") | Some("createdb")
            | Some("nocreatedb") | Some("createrole") | Some("nocreaterole") => {}
            Some("superuser") => superuser = Some(true),
            Some("nosuperuser") => superuser = Some(false),
            Some("password") => {
                i += 1;
                match toks.get(i) {
                    Some(Token::SingleQuotedString(p)) => password = Some(p.clone()),
                    Some(Token::Word(w)) if w.value.eq_ignore_ascii_case("null") => password = None,
                    _ => return Err(syntax_error("PASSWORD needs a quoted string")),
                }
            }
            _ => {
                return Err(syntax_error(&format!(
                    "unexpected {} in {} USER",
                    toks[i],
                    verb.to_uppercase()
                )));
            }
        }
        i += 1;
    }
    if verb == "create" {
        Ok(TallyStatement::CreateUser {
            name,
            password,
            superuser: superuser.unwrap_or(false),
        })
    } else {
        Ok(TallyStatement::AlterUser {
            name,
            password,
            superuser,
        })
    }
}

/// Splits a query string at top-level semicolons, respecting quotes, dollar quotes and
/// comments. Returns each non-empty statement with its byte offset.
pub fn split_statements<'a>(sql: &'a str) -> Vec<(usize, &'a str)> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i) = (0usize, 0usize);
    let push = |out: &mut Vec<(usize, &'a str)>, s: usize, e: usize| {
        let text = &sql[s..e];
        let trimmed = text.trim_start();
        if !is_blank(trimmed) {
            out.push((s + (text.len() - trimmed.len()), trimmed.trim_end()));
        }
    };
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                // E'...' strings allow backslash escapes.
                let backslash = q == b'\'' && i > 0 && (b[i - 1] == b'E' || b[i - 1] == b'e');
                i += 1;
                while i < b.len() {
                    if backslash && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == q {
                        if i + 1 < b.len() && b[i + 1] == q {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if i + 1 < b.len() && b[i + 1] == b'-' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if i + 1 < b.len() && b[i + 1] == b'*' => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'*' {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && i + 1 < b.len() && b[i + 1] == b'/' {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' => {
                // Dollar quote: $tag$ ... $tag$ (tag may be empty); a parameter like $1 is not one.
                let tag_end = sql[i + 1..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .map(|n| i + 1 + n);
                match tag_end {
                    Some(e) if b[e] == b'$' && !(e > i + 1 && b[i + 1].is_ascii_digit()) => {
                        let tag = &sql[i..=e];
                        match sql[e + 1..].find(tag) {
                            Some(n) => i = e + 1 + n + tag.len(),
                            None => i = b.len(),
                        }
                    }
                    _ => i += 1,
                }
            }
            b';' => {
                push(&mut out, start, i);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < b.len() {
        push(&mut out, start, b.len());
    }
    out
}

/// Whether a statement text holds nothing but whitespace and comments.
fn is_blank(text: &str) -> bool {
    let mut rest = text.trim_start();
    loop {
        if rest.is_empty() {
            return true;
        }
        if let Some(r) = rest.strip_prefix("--") {
            rest = r
                .split_once('\n')
                .map(|(_, r)| r)
                .unwrap_or("")
                .trim_start();
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r
                .split_once("*/")
                .map(|(_, r)| r)
                .unwrap_or("")
                .trim_start();
        } else {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_top_level_semicolons_only() {
        let s = "select ';'; select $$a;b$$ ; -- c;\n select \"x;y\" /* ; */";
        let parts: Vec<&str> = split_statements(s).into_iter().map(|(_, t)| t).collect();
        assert_eq!(
            parts,
            vec![
                "select ';'",
                "select $$a;b$$",
                "-- c;\n select \"x;y\" /* ; */"
            ]
        );
    }

    #[test]
    fn blank_statements_vanish() {
        assert!(split_statements(" ; ;-- nothing\n").is_empty());
    }

    #[test]
    fn syntax_errors_carry_positions() {
        let err = parse("select 1;\nselec 2").unwrap_err();
        assert_eq!(err.sqlstate(), "42601");
        assert_eq!(err.position(), Some(11));
    }

    #[test]
    fn dollar_quoted_comments_become_literals() {
        let sql = "comment on view \"s\".\"v\" is $c$it's $1, ok$c$";
        assert_eq!(
            dollar_quotes_to_literals(sql).as_deref(),
            Some("comment on view \"s\".\"v\" is 'it''s $1, ok'")
        );
        assert!(dollar_quotes_to_literals("comment on table t is 'x'").is_none());
        assert!(matches!(
            parse(sql).unwrap()[0].stmt,
            TallyStatement::Sql(ref s) if matches!(**s, Statement::Comment { .. })
        ));
    }

    #[test]
    fn parameters_are_not_dollar_quotes() {
        assert_eq!(split_statements("select $1; select 2").len(), 2);
    }
}
