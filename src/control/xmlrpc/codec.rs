//! XML-RPC values (<http://xmlrpc.com/spec.md>): a `methodCall` body decoded into a method name
//! and typed [`Value`]s, and `methodResponse` bodies (a value or a fault) encoded.
//!
//! Runs in the control worker; every byte decoded here is a remote frontend's. The XML itself
//! is read by quick-xml (no hand-written XML parser); this file only maps its events onto
//! XML-RPC's few element names. Bounded: the body is capped by the HTTP layer, nesting by
//! [`MAX_DEPTH`], elements by [`MAX_NODES`]; a DOCTYPE is refused (no entity games).

use std::fmt::Write as _;

use quick_xml::events::Event;
use quick_xml::Reader;

/// Deepest element nesting accepted (a call with a struct of arrays is about 10 deep).
pub const MAX_DEPTH: usize = 32;
/// Most elements in one call.
pub const MAX_NODES: usize = 20_000;

/// An XML-RPC value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Bool(bool),
    Str(String),
    Double(f64),
    /// `dateTime.iso8601` and `base64` are kept as their text; no procedure takes them.
    Other(&'static str, String),
    Nil,
    Array(Vec<Value>),
    Struct(Vec<(String, Value)>),
}

impl Value {
    /// The XML-RPC type name, for fault messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::Bool(_) => "boolean",
            Value::Str(_) => "string",
            Value::Double(_) => "double",
            Value::Other(t, _) => t,
            Value::Nil => "nil",
            Value::Array(_) => "array",
            Value::Struct(_) => "struct",
        }
    }
}

/// A decoded `methodCall`.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub method: String,
    pub params: Vec<Value>,
}

/// One element: its name, its children and its text (entities resolved).
#[derive(Debug, Default)]
struct Node {
    name: String,
    children: Vec<Node>,
    text: String,
}

/// Builds the element tree of `body` with quick-xml; Err says why it is not well-formed.
fn tree(body: &[u8]) -> Result<Node, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
    let mut r = Reader::from_str(text);
    let mut stack: Vec<Node> = vec![Node::default()];
    let mut nodes = 0usize;
    // Bounded: every event consumes input, and the input is capped by the HTTP layer.
    loop {
        let ev = r
            .read_event()
            .map_err(|e| format!("not well-formed XML: {e}"))?;
        match ev {
            Event::Start(e) | Event::Empty(e) if stack.len() > MAX_DEPTH => {
                let _ = e;
                return Err(format!("nested deeper than {MAX_DEPTH} elements"));
            }
            Event::Start(e) => {
                nodes += 1;
                if nodes > MAX_NODES {
                    return Err(format!("more than {MAX_NODES} elements"));
                }
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                stack.push(Node {
                    name,
                    ..Node::default()
                });
            }
            Event::Empty(e) => {
                nodes += 1;
                if nodes > MAX_NODES {
                    return Err(format!("more than {MAX_NODES} elements"));
                }
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if let Some(top) = stack.last_mut() {
                    top.children.push(Node {
                        name,
                        ..Node::default()
                    });
                }
            }
            Event::End(_) => {
                let done = stack.pop().ok_or("unbalanced end tag")?;
                let Some(top) = stack.last_mut() else {
                    return Err("unbalanced end tag".into());
                };
                top.children.push(done);
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| format!("bad text: {e}"))?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&s);
                }
            }
            Event::CData(t) => {
                let s = t.decode().map_err(|e| format!("bad CDATA: {e}"))?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&s);
                }
            }
            Event::GeneralRef(e) => {
                let c = match e.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => {
                        let name = e.decode().map_err(|e| format!("bad reference: {e}"))?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| format!("unknown entity &{name};"))?
                            .to_owned()
                    }
                    Err(e) => return Err(format!("bad character reference: {e}")),
                };
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&c);
                }
            }
            Event::DocType(_) => return Err("a DOCTYPE is not accepted".into()),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    let mut root = stack.pop().ok_or("no document")?;
    if !stack.is_empty() {
        return Err("unclosed element".into());
    }
    if root.children.len() != 1 {
        return Err("not exactly one root element".into());
    }
    root.children.pop().ok_or_else(|| "no root element".into())
}

/// Elements only (XML-RPC puts no text beside elements but whitespace).
fn elements(n: &Node) -> Result<&[Node], String> {
    if !n.children.is_empty() && !n.text.trim().is_empty() {
        return Err(format!("<{}> mixes text and elements", n.name));
    }
    Ok(&n.children)
}

fn only_child<'a>(n: &'a Node, what: &str) -> Result<&'a Node, String> {
    match elements(n)? {
        [c] => Ok(c),
        _ => Err(format!("<{}> must hold exactly one {what}", n.name)),
    }
}

fn value(n: &Node) -> Result<Value, String> {
    if n.name != "value" {
        return Err(format!("expected <value>, found <{}>", n.name));
    }
    // A bare text value is a string.
    if n.children.is_empty() {
        return Ok(Value::Str(n.text.clone()));
    }
    let t = only_child(n, "typed value")?;
    let text = t.text.as_str();
    let int = |s: &str, bits: u32| -> Result<Value, String> {
        let v: i64 = s
            .trim()
            .parse()
            .map_err(|_| format!("<{}> '{s}' is not an integer", t.name))?;
        if bits == 32 && i32::try_from(v).is_err() {
            return Err(format!("<{}> {v} is beyond 32 bits", t.name));
        }
        Ok(Value::Int(v))
    };
    if !t.children.is_empty() && !matches!(t.name.as_str(), "struct" | "array") {
        return Err(format!("<{}> holds elements", t.name));
    }
    match t.name.as_str() {
        "i4" | "int" => int(text, 32),
        "i8" => int(text, 64),
        "boolean" => match text.trim() {
            "1" => Ok(Value::Bool(true)),
            "0" => Ok(Value::Bool(false)),
            s => Err(format!("<boolean> '{s}' is neither 0 nor 1")),
        },
        "string" => Ok(Value::Str(text.to_owned())),
        "double" => text
            .trim()
            .parse()
            .map(Value::Double)
            .map_err(|_| format!("<double> '{text}' is not a number")),
        "dateTime.iso8601" => Ok(Value::Other("dateTime.iso8601", text.to_owned())),
        "base64" => Ok(Value::Other("base64", text.to_owned())),
        "nil" => Ok(Value::Nil),
        "array" => {
            let data = only_child(t, "<data>")?;
            if data.name != "data" {
                return Err(format!("<array> holds <{}>, not <data>", data.name));
            }
            elements(data)?
                .iter()
                .map(value)
                .collect::<Result<_, _>>()
                .map(Value::Array)
        }
        "struct" => {
            let mut members = Vec::new();
            for m in elements(t)? {
                if m.name != "member" {
                    return Err(format!("<struct> holds <{}>, not <member>", m.name));
                }
                let (name, v) = match elements(m)? {
                    [a, b] if a.name == "name" && b.name == "value" => (a, b),
                    [b, a] if a.name == "name" && b.name == "value" => (a, b),
                    _ => return Err("<member> must hold one <name> and one <value>".into()),
                };
                members.push((name.text.clone(), value(v)?));
            }
            Ok(Value::Struct(members))
        }
        other => Err(format!("<{other}> is not an XML-RPC type")),
    }
}

/// Decodes a `methodCall`; Err says what is wrong with it (a fault's message).
pub fn decode_call(body: &[u8]) -> Result<Call, String> {
    let root = tree(body)?;
    if root.name != "methodCall" {
        return Err(format!("expected <methodCall>, found <{}>", root.name));
    }
    let mut method = None;
    let mut params = Vec::new();
    for c in elements(&root)? {
        match c.name.as_str() {
            "methodName" if method.is_none() => method = Some(c.text.trim().to_owned()),
            "params" => {
                for p in elements(c)? {
                    if p.name != "param" {
                        return Err(format!("<params> holds <{}>, not <param>", p.name));
                    }
                    params.push(value(only_child(p, "<value>")?)?);
                }
            }
            other => return Err(format!("unexpected <{other}> in <methodCall>")),
        }
    }
    let method = method.ok_or("no <methodName>")?;
    if method.is_empty() {
        return Err("an empty <methodName>".into());
    }
    Ok(Call { method, params })
}

/// Text escaped for any XML 1.0 reader: the five markup characters, and CR as a character
/// reference (a reader turns a raw CR or CRLF into LF: Python's expat does).
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    let e = quick_xml::escape::escape(s);
    if e.contains('\r') {
        std::borrow::Cow::Owned(e.replace('\r', "&#13;"))
    } else {
        e
    }
}

fn encode_value(out: &mut String, v: &Value) {
    out.push_str("<value>");
    match v {
        Value::Int(i) if i32::try_from(*i).is_ok() => {
            let _ = write!(out, "<int>{i}</int>");
        }
        Value::Int(i) => {
            let _ = write!(out, "<i8>{i}</i8>");
        }
        Value::Bool(b) => {
            let _ = write!(out, "<boolean>{}</boolean>", u8::from(*b));
        }
        Value::Str(s) => {
            let _ = write!(out, "<string>{}</string>", escape(s));
        }
        Value::Double(d) => {
            let _ = write!(out, "<double>{d}</double>");
        }
        Value::Other(t, s) => {
            let _ = write!(out, "<{t}>{}</{t}>", escape(s));
        }
        Value::Nil => out.push_str("<nil/>"),
        Value::Array(items) => {
            out.push_str("<array><data>");
            for i in items {
                encode_value(out, i);
            }
            out.push_str("</data></array>");
        }
        Value::Struct(members) => {
            out.push_str("<struct>");
            for (k, v) in members {
                let _ = write!(out, "<member><name>{}</name>", escape(k.as_str()));
                encode_value(out, v);
                out.push_str("</member>");
            }
            out.push_str("</struct>");
        }
    }
    out.push_str("</value>");
}

/// A `methodResponse` carrying `v`.
pub fn encode_response(v: &Value) -> Vec<u8> {
    let mut out = String::from("<?xml version=\"1.0\"?>\n<methodResponse><params><param>");
    encode_value(&mut out, v);
    out.push_str("</param></params></methodResponse>\n");
    out.into_bytes()
}

/// A `methodResponse` carrying a fault.
pub fn encode_fault(code: i32, message: &str) -> Vec<u8> {
    let mut out = String::from("<?xml version=\"1.0\"?>\n<methodResponse><fault>");
    encode_value(
        &mut out,
        &Value::Struct(vec![
            ("faultCode".into(), Value::Int(i64::from(code))),
            ("faultString".into(), Value::Str(message.to_owned())),
        ]),
    );
    out.push_str("</fault></methodResponse>\n");
    out.into_bytes()
}

/// A `methodCall` body (what a frontend sends): for the round-trip property below and tests.
pub fn encode_call(call: &Call) -> Vec<u8> {
    let mut out = String::from("<?xml version=\"1.0\"?>\n<methodCall><methodName>");
    out.push_str(&escape(call.method.as_str()));
    out.push_str("</methodName><params>");
    for p in &call.params {
        out.push_str("<param>");
        encode_value(&mut out, p);
        out.push_str("</param>");
    }
    out.push_str("</params></methodCall>\n");
    out.into_bytes()
}

/// Bodies up to this size are round-tripped by [`check_call`]: re-encoding a bare-text value
/// adds an element, so a body near [`MAX_NODES`] may legitimately not decode again.
pub const ROUND_TRIP_MAX: usize = 16 * 1024;

/// The decoder's property, for the fuzz target and the tests (beyond "no panic"): `body`
/// either is refused, or decodes to a call that, encoded, decodes to a call with the same
/// encoding (what a client sent is what procedures see, and a second pass changes nothing).
/// Ok(true) when it decoded.
pub fn check_call(body: &[u8]) -> Result<bool, String> {
    let Ok(call) = decode_call(body) else {
        return Ok(false);
    };
    if body.len() > ROUND_TRIP_MAX {
        return Ok(true);
    }
    let once = encode_call(&call);
    let again = decode_call(&once).map_err(|e| {
        format!(
            "{call:?} encoded as {} does not decode: {e}",
            String::from_utf8_lossy(&once)
        )
    })?;
    let twice = encode_call(&again);
    if once != twice {
        return Err(format!(
            "{call:?} became {again:?}: {} then {}",
            String::from_utf8_lossy(&once),
            String::from_utf8_lossy(&twice)
        ));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_python_xmlrpc_client_sends() {
        let body = br#"<?xml version='1.0'?>
<methodCall>
<methodName>view</methodName>
<params>
<param><value><string>abc</string></value></param>
<param><value><struct>
<member><name>orig_l4proto</name><value><int>6</int></value></member>
<member><name>id</name><value><string>1&amp;2</string></value></member>
</struct></value></param>
<param><value>bare &lt;text&#62;</value></param>
<param><value><array><data><value><i4>-5</i4></value><value><boolean>1</boolean></value></data></array></value></param>
<param><value><i8>4294967296</i8></value></param>
<param><value><nil/></value></param>
</params>
</methodCall>"#;
        let c = decode_call(body).unwrap();
        assert_eq!(c.method, "view");
        assert_eq!(
            c.params,
            vec![
                Value::Str("abc".into()),
                Value::Struct(vec![
                    ("orig_l4proto".into(), Value::Int(6)),
                    ("id".into(), Value::Str("1&2".into())),
                ]),
                Value::Str("bare <text>".into()),
                Value::Array(vec![Value::Int(-5), Value::Bool(true)]),
                Value::Int(4_294_967_296),
                Value::Nil,
            ]
        );
        // No params at all is a call too.
        let c = decode_call(b"<methodCall><methodName>login</methodName></methodCall>").unwrap();
        assert!(c.params.is_empty());
    }

    #[test]
    fn refuses_what_is_not_an_xml_rpc_call() {
        let deep = format!(
            "<methodCall><methodName>x</methodName><params><param>{}1{}</param></params></methodCall>",
            "<value><array><data>".repeat(20),
            "</data></array></value>".repeat(20)
        );
        for bad in [
            &b"<methodCall><methodName>x</methodName>"[..],
            b"<methodCall><methodName>x</methodName></methodCall><x/>",
            b"<!DOCTYPE x [<!ENTITY a 'b'>]><methodCall><methodName>&a;</methodName></methodCall>",
            b"<methodCall><params/></methodCall>",
            b"<methodCall><methodName>x</methodName><params><param><value><int>9999999999</int></value></param></params></methodCall>",
            b"<methodCall><methodName>x</methodName><params><param><value><boolean>2</boolean></value></param></params></methodCall>",
            b"<methodCall><methodName>x</methodName><params><param><value><foo>1</foo></value></param></params></methodCall>",
            b"<methodCall><methodName>x</methodName><params><param><value><int>1</int><int>2</int></value></param></params></methodCall>",
            b"\xff\xfe",
            deep.as_bytes(),
        ] {
            assert!(decode_call(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn round_trip_property_on_seeds_and_mutations() {
        let seed = br#"<?xml version='1.0'?>
<methodCall><methodName>view</methodName><params>
<param><value><string>a&amp;b &#13;&#10;c</string></value></param>
<param><value><struct><member><name>n&lt;</name><value><double>-1.5e3</double></value></member>
<member><value><i8>-9223372036854775808</i8></value><name>x</name></member></struct></value></param>
<param><value>bare <![CDATA[<c>]]> text</value></param>
<param><value><array><data><value><i4>+7</i4></value><value><boolean> 1 </boolean></value>
<value><nil/></value><value><base64>AAE=</base64></value><value><dateTime.iso8601>20261206T03:00:00</dateTime.iso8601></value>
<value><double>nan</double></value><value><double>-inf</double></value></data></array></value></param>
</params></methodCall>"#;
        assert_eq!(check_call(seed), Ok(true));
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let pieces: [&[u8]; 8] = [
            b"<value>",
            b"</value>",
            b"&#13;",
            b"&amp;",
            b"<string>",
            b"\r\n",
            b"<![CDATA[\r]]>",
            b"<i8>",
        ];
        let mut decoded = 0;
        for case in 0..20_000 {
            let mut data = seed.to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() % data.len() as u64) as usize;
                match next() % 5 {
                    0 => data[at] ^= 1 << (next() % 8),
                    1 => data.truncate(at.max(1)),
                    2 => data.insert(at, next() as u8),
                    3 => {
                        let p = pieces[(next() % pieces.len() as u64) as usize];
                        data.splice(at..at, p.iter().copied());
                    }
                    _ => data[at] = next() as u8,
                }
            }
            match check_call(&data) {
                Ok(ok) => decoded += usize::from(ok),
                Err(e) => panic!("case {case}: {e}"),
            }
        }
        // Mutations must not all be refused, or the test proves little.
        assert!(decoded > 300, "{decoded}");
    }

    #[test]
    fn encodes_responses_and_faults_that_decode_back() {
        let v = Value::Struct(vec![
            ("a<b".into(), Value::Int(1 << 40)),
            ("s".into(), Value::Str("x&y".into())),
            (
                "l".into(),
                Value::Array(vec![Value::Bool(false), Value::Int(-1)]),
            ),
        ]);
        let body = String::from_utf8(encode_response(&v)).unwrap();
        assert!(
            body.contains("<i8>1099511627776</i8>") && body.contains("a&lt;b"),
            "{body}"
        );
        // Round trip through the call decoder's value reader.
        let call = body
            .replace("methodResponse>", "methodCall>")
            .replace("<methodCall>", "<methodCall><methodName>r</methodName>");
        assert_eq!(decode_call(call.as_bytes()).unwrap().params, vec![v]);
        let f = String::from_utf8(encode_fault(-32601, "no such <method>")).unwrap();
        assert!(
            f.contains("<fault>") && f.contains("<int>-32601</int>"),
            "{f}"
        );
        assert!(f.contains("no such &lt;method&gt;"), "{f}");
        // A CR survives a reader that normalises line ends.
        let r = String::from_utf8(encode_response(&Value::Str("a\r\nb".into()))).unwrap();
        assert!(r.contains("<string>a&#13;\nb</string>"), "{r}");
    }
}
