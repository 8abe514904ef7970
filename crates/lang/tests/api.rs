//! The language layer used as a library, as the HTTP server will use it:
//! one `Language` and one `Engine` shared by many threads. Needs root for
//! cgroups (CI runs as root); prints SKIP otherwise.

use formicary_engine::config::EngineConfig;
use formicary_engine::result::Status;
use formicary_engine::sandbox::Engine;
use formicary_lang::{Catalogue, CodeRequest, Language, SourceFile, VersionCache};
use std::sync::Arc;

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn request(language: &str, name: &str, code: &str, stdin: &str, lang: &Language) -> CodeRequest {
    let runtime = lang.catalogue().find(language).expect("known language");
    let (limits, compile_limits) = lang.limits(
        runtime,
        &Default::default(),
        &formicary_engine::spec::Limits::default_maximum(),
    );
    CodeRequest {
        language: Some(language.into()),
        files: vec![SourceFile {
            name: name.into(),
            content: code.as_bytes().to_vec(),
        }],
        main: None,
        stdin: stdin.as_bytes().to_vec(),
        args: vec!["arg1".into()],
        env: vec![],
        limits,
        compile_limits,
        input_files: vec![],
        outputs: None,
        allow_degraded: false,
        profile: false,
        network: Default::default(),
    }
}

#[test]
fn many_threads_run_interpreted_and_compiled_code_at_once() {
    if !is_root() {
        println!("SKIP: needs root for cgroups");
        return;
    }
    let lang = Arc::new(Language::new(
        Catalogue::builtin().expect("catalogue"),
        VersionCache::new(None),
    ));
    for name in ["python", "c"] {
        if let Err(reason) = lang.catalogue().find(name).expect("known").availability() {
            println!("SKIP: {name}: {reason}");
            return;
        }
    }
    let engine = Arc::new(Engine::new(EngineConfig::default()).expect("engine"));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (lang, engine) = (Arc::clone(&lang), Arc::clone(&engine));
            std::thread::spawn(move || {
                for i in 0..3 {
                    let input = format!("t{t} i{i}");
                    let (language, name, code) = if (t + i) % 2 == 0 {
                        (
                            "python",
                            "main.py",
                            "import sys; print(sys.stdin.read().upper(), sys.argv[1])",
                        )
                    } else {
                        (
                            "c",
                            "main.c",
                            "#include <stdio.h>\n#include <ctype.h>\nint main(int c, char **v) { int ch; while ((ch = getchar()) != EOF) putchar(toupper(ch)); printf(\" %s\\n\", v[1]); return 0; }\n",
                        )
                    };
                    let result = lang
                        .run(&engine, &request(language, name, code, &input, &lang))
                        .expect("request accepted");
                    assert_eq!(result.run.status, Status::Ok, "{result:?}");
                    assert_eq!(result.run.stdout, format!("{} arg1\n", input.to_uppercase()));
                    assert_eq!(result.language, language);
                    assert!(result.version.is_some(), "a version is reported");
                    assert_eq!(result.compile.is_some(), language == "c");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
}

#[test]
fn an_unavailable_runtime_is_a_clear_error_not_a_crash() {
    let catalogue = Catalogue::builtin()
        .expect("catalogue")
        .merged(
            "test",
            r#"
[[runtime]]
name = "cobol"
extensions = ["cob"]
default_main = "main.cob"
run = ["/usr/bin/cobc-not-installed", "{main}"]
version = ["/usr/bin/cobc-not-installed", "--version"]
requires = ["/usr/bin/cobc-not-installed"]
"#,
        )
        .expect("valid");
    let lang = Language::new(catalogue, VersionCache::new(None));
    let engine = match Engine::new(EngineConfig::default()) {
        Ok(e) => e,
        Err(e) => {
            println!("SKIP: no engine here: {e}");
            return;
        }
    };
    let err = lang
        .run(&engine, &request("cobol", "main.cob", "x", "", &lang))
        .expect_err("must be refused");
    let text = err.to_string();
    assert!(text.contains("cobol is not available"), "{text}");
    assert!(text.contains("cobc-not-installed"), "{text}");
}
