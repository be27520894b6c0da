//! `chat = true`: a prompt wrapped in the model's own chat template, rendered with a
//! real Jinja engine (minijinja) the way Hugging Face's `apply_chat_template` renders
//! it: `trim_blocks` and `lstrip_blocks` on, a single trailing newline of the template
//! dropped, `raise_exception(msg)` and Python's string methods (`.strip()`,
//! `.startswith()`, ...) available, and the context
//! `messages = [{"role": "user", "content": prompt}]`, `add_generation_prompt = true`,
//! `bos_token = eos_token = ""` (c2i's tokenizer adds no special tokens of its own,
//! and the end of turn is what generation stops at).

use super::error::DataError;
use minijinja::{context, Environment, Error, ErrorKind};

/// A model's chat template, compiled once.
pub struct ChatTemplate {
    env: Environment<'static>,
    model: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

fn raise_exception(msg: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    /// Compiles `source`; `model` names the model file in errors.
    pub fn new(source: &str, model: &str) -> Result<ChatTemplate, DataError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| DataError::Chat {
                model: model.to_owned(),
                message: e.to_string(),
            })?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat".to_string(), source.to_string())
            .map_err(|e| DataError::Chat {
                model: model.to_owned(),
                message: format!("does not compile: {e}"),
            })?;
        Ok(ChatTemplate {
            env,
            model: model.to_owned(),
        })
    }

    /// The text a model sees for one user prompt, ready for its answer.
    pub fn render(&self, prompt: &str) -> Result<String, DataError> {
        let err = |e: Error| DataError::Chat {
            model: self.model.clone(),
            message: e.to_string(),
        };
        let t = self.env.get_template("chat").map_err(err)?;
        t.render(context! {
            messages => vec![context! { role => "user", content => prompt }],
            add_generation_prompt => true,
            bos_token => "",
            eos_token => "",
        })
        .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_and_lstrip_blocks_and_raise() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n  {{ m.role }}: {{ m.content.strip() }}\n{% endfor %}\n{% if add_generation_prompt %}A:{% endif %}\n",
            "m",
        )
        .unwrap();
        // Expected strings printed by Python's jinja2 3.1.6 with trim_blocks and
        // lstrip_blocks (what Hugging Face uses).
        assert_eq!(t.render("  hi ").unwrap(), "  user: hi\nA:");
        let t = ChatTemplate::new(
            "{% for m in messages %}\n  {% if true %}{{ m.role }}{% endif %}\n{% endfor %}",
            "m",
        )
        .unwrap();
        assert_eq!(t.render("x").unwrap(), "user");
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "m").unwrap();
        let e = t.render("x").unwrap_err().to_string();
        assert!(
            e.starts_with("chat template of m: ") && e.contains("no system role"),
            "{e}"
        );
        let e = ChatTemplate::new("{% if %}", "m").unwrap_err().to_string();
        assert!(e.contains("does not compile"), "{e}");
    }
}
