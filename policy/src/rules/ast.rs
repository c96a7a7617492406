//! The syntax tree of one rule expression, before matchers are resolved.
//!
//! Built by [`super::parse`] from the administrator's rules text (parent and classifier);
//! [`super::compile`] turns it into evaluable nodes. Every operand keeps the byte span of its
//! words in the expression text so later errors point at them.

use std::ops::Range;

/// One operand as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operand {
    /// `MATCHER: ARGUMENT` (the matcher word ends in `:`).
    WithArg {
        name: String,
        name_span: Range<usize>,
        arg: String,
        arg_span: Range<usize>,
    },
    /// A no-argument matcher (`ALL`) or a bare argument (`128.100.`, `.example.com`).
    Bare { word: String, span: Range<usize> },
}

impl Operand {
    /// The bytes of the expression text the operand covers.
    pub fn span(&self) -> Range<usize> {
        match self {
            Operand::WithArg {
                name_span,
                arg_span,
                ..
            } => name_span.start..arg_span.end,
            Operand::Bare { span, .. } => span.clone(),
        }
    }
}

/// An expression, with the original's operators. `And` is n-ary and evaluated left to right
/// (the original nests it to the right, which means the same); `Except` nests to the right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    Operand(Operand),
    Not(Box<Expr>),
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Except(Box<Expr>, Box<Expr>),
}
