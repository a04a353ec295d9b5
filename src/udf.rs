//! UDFs written for Arroyo, loaded into DataFusion.
//!
//! A UDF is a Rust crate written against `arroyo-udf-plugin` exactly as an
//! Arroyo user writes one: one `#[udf] fn` in `src/lib.rs`, built as a
//! `cdylib` in a cargo workspace of its own (the plugin pins arrow 51, which
//! cannot share a lockfile with DataFusion's arrow). The plugin's macro
//! exports one symbol, `__run`, which takes the arguments' arrays and
//! returns the result's, both over the Arrow C data interface: the arrays
//! cross between arrow versions as the C structs the interface defines, and
//! the three `#[repr(C)]` types that carry them are mirrored here.
//!
//! The signature comes from the UDF's source, read when it is built
//! ([`build`] parses `src/lib.rs` and writes a manifest beside the library,
//! `<library stem>.udf.json`), and is checked against what each call
//! returns: a UDF that panics (the plugin catches the panic) or returns
//! another type than it declares fails the query with one line, and the
//! process goes on.
//!
//! The plugin takes the argument vector the host allocates and frees it
//! with its own global allocator, the system's (the plugin must not set
//! one). So the host takes that vector, and only it, from the C allocator
//! ([`c_vector`]), whatever allocator the host process uses for the rest.

// Calling into a dynamic library is unsafe by nature; every unsafe block
// here is one of the FFI steps or the C allocation of what crosses, each with its reason.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, make_array};
use arrow::datatypes::DataType;
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi, to_ffi};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature as DfSignature, Volatility,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Mirror of the plugin's `FfiArraySchema`: one array and its schema.
#[repr(C)]
struct FfiArraySchema(FFI_ArrowArray, FFI_ArrowSchema);

/// Mirror of the plugin's `FfiArrays`: a vector of arrays the plugin takes
/// ownership of (and frees).
#[repr(C)]
struct FfiArrays {
    ptr: *mut FfiArraySchema,
    len: usize,
    capacity: usize,
    error: bool,
}

// The C allocator's memory is aligned for any fundamental type (16 bytes
// on 64-bit Linux), which covers the arrays' structs.
const _: () = assert!(std::mem::align_of::<FfiArraySchema>() <= 16);

/// `arrays` moved into memory from the C allocator, as the plugin's `Vec`
/// of them: the plugin grows or frees it with its global allocator, the
/// system's, i.e. `realloc` and `free` (`None`: out of memory).
fn c_vector(arrays: Vec<FfiArraySchema>) -> Option<FfiArrays> {
    let len = arrays.len();
    let bytes = std::mem::size_of::<FfiArraySchema>().checked_mul(len.max(1))?;
    // SAFETY: malloc takes a size and returns uninitialised memory or null.
    let ptr = unsafe { libc::malloc(bytes) }.cast::<FfiArraySchema>();
    if ptr.is_null() {
        return None;
    }
    for (i, array) in arrays.into_iter().enumerate() {
        // SAFETY: `ptr` holds room for `len` aligned structs (asserted
        // above), and each slot is written once.
        unsafe { ptr.add(i).write(array) };
    }
    Some(FfiArrays { ptr, len, capacity: len, error: false })
}

/// Mirror of the plugin's `RunResult`.
#[repr(C)]
#[allow(dead_code)] // built by the plugin, never here
enum RunResult {
    Ok(FfiArraySchema),
    Err,
}

type Run = unsafe extern "C-unwind" fn(FfiArrays) -> RunResult;

/// A type a UDF takes or returns, as its Rust source writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UdfType {
    /// `bool`
    Bool,
    /// `i32`
    I32,
    /// `i64`
    I64,
    /// `u32`
    U32,
    /// `u64`
    U64,
    /// `f32`
    F32,
    /// `f64`
    F64,
    /// `&str` (argument) or `String` (result)
    Utf8,
    /// `&[u8]` (argument) or `Vec<u8>` (result)
    Binary,
}

impl UdfType {
    /// The Arrow type of its arrays.
    pub fn data_type(self) -> DataType {
        match self {
            UdfType::Bool => DataType::Boolean,
            UdfType::I32 => DataType::Int32,
            UdfType::I64 => DataType::Int64,
            UdfType::U32 => DataType::UInt32,
            UdfType::U64 => DataType::UInt64,
            UdfType::F32 => DataType::Float32,
            UdfType::F64 => DataType::Float64,
            UdfType::Utf8 => DataType::Utf8,
            UdfType::Binary => DataType::Binary,
        }
    }
}

/// One argument or the result: its type, and whether it is an `Option`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Typed {
    /// The type.
    #[serde(rename = "type")]
    pub udf_type: UdfType,
    /// `Option<…>`: an argument receives nulls, a result may be null. A
    /// null for an argument that is not an `Option` gives a null result
    /// without a call.
    pub nullable: bool,
}

/// What a UDF's source declares, written beside its library when it is built.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The function's name: its name in SQL.
    pub name: String,
    /// Its arguments, in order.
    pub args: Vec<Typed>,
    /// Its result.
    pub returns: Typed,
}

/// Why a UDF cannot be built or loaded, in one line.
#[derive(Debug, thiserror::Error)]
#[error("UDF {path}: {reason}")]
pub struct UdfError {
    /// The crate or library.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

fn error(path: &Path, reason: impl std::fmt::Display) -> UdfError {
    UdfError { path: path.display().to_string(), reason: reason.to_string() }
}

/// The type of `ty` as an argument (`owned = false`) or a result.
fn rust_type(ty: &syn::Type, owned: bool) -> Result<Typed, String> {
    let not_null = |udf_type| Ok(Typed { udf_type, nullable: false });
    match ty {
        syn::Type::Path(path) => {
            let last = path.path.segments.last().ok_or("an empty type path")?;
            if last.ident == "Option" {
                let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
                    return Err("Option without its type".into());
                };
                let Some(syn::GenericArgument::Type(inner)) = args.args.first() else {
                    return Err("Option without its type".into());
                };
                let inner = rust_type(inner, owned)?;
                return Ok(Typed { nullable: true, ..inner });
            }
            let name = quote_path(path);
            match (name.as_str(), owned) {
                ("bool", _) => not_null(UdfType::Bool),
                ("i32", _) => not_null(UdfType::I32),
                ("i64", _) => not_null(UdfType::I64),
                ("u32", _) => not_null(UdfType::U32),
                ("u64", _) => not_null(UdfType::U64),
                ("f32", _) => not_null(UdfType::F32),
                ("f64", _) => not_null(UdfType::F64),
                ("String", true) => not_null(UdfType::Utf8),
                ("Vec<u8>", true) => not_null(UdfType::Binary),
                ("String", false) => Err("an argument of text is &str, not String".into()),
                ("Vec<u8>", false) => Err("an argument of bytes is &[u8], not Vec<u8>".into()),
                (other, _) => Err(format!("the type {other} is not one coldstream passes to a UDF")),
            }
        }
        syn::Type::Reference(reference) if !owned => match &*reference.elem {
            syn::Type::Path(path) if quote_path(path) == "str" => not_null(UdfType::Utf8),
            syn::Type::Slice(slice) if matches!(&*slice.elem, syn::Type::Path(p) if quote_path(p) == "u8") => {
                not_null(UdfType::Binary)
            }
            _ => Err("only &str and &[u8] are passed by reference".into()),
        },
        syn::Type::Reference(_) => Err("a result is owned: String or Vec<u8>".into()),
        _ => Err("an unsupported type".into()),
    }
}

fn quote_path(path: &syn::TypePath) -> String {
    path.path
        .segments
        .iter()
        .map(|segment| match &segment.arguments {
            syn::PathArguments::AngleBracketed(args) => {
                let inner: Vec<String> = args
                    .args
                    .iter()
                    .map(|arg| match arg {
                        syn::GenericArgument::Type(syn::Type::Path(p)) => quote_path(p),
                        _ => "?".into(),
                    })
                    .collect();
                format!("{}<{}>", segment.ident, inner.join(","))
            }
            _ => segment.ident.to_string(),
        })
        .collect::<Vec<_>>()
        .join("::")
}

/// The signature of the one `#[udf] fn` in `source`.
pub fn parse_signature(source: &str) -> Result<Manifest, String> {
    let file = syn::parse_file(source).map_err(|e| format!("src/lib.rs does not parse: {e}"))?;
    let udfs: Vec<&syn::ItemFn> = file
        .items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Fn(function)
                if function.attrs.iter().any(|a| a.path().segments.last().is_some_and(|s| s.ident == "udf")) =>
            {
                Some(function)
            }
            _ => None,
        })
        .collect();
    let function = match udfs[..] {
        [function] => function,
        [] => return Err("src/lib.rs has no #[udf] fn".into()),
        _ => return Err("src/lib.rs has several #[udf] fns; a UDF library exports one".into()),
    };
    if function.sig.asyncness.is_some() {
        return Err("async UDFs are not supported".into());
    }
    let name = function.sig.ident.to_string();
    let mut args = Vec::new();
    for input in &function.sig.inputs {
        let syn::FnArg::Typed(arg) = input else { return Err("a UDF takes no self".into()) };
        if matches!(&*arg.ty, syn::Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Vec"))
            && quote_path_of(&arg.ty) != "Vec<u8>"
        {
            return Err(format!("{name}: aggregate UDFs (Vec<…> arguments) are not supported"));
        }
        args.push(rust_type(&arg.ty, false).map_err(|e| format!("{name}: {e}"))?);
    }
    if args.is_empty() {
        return Err(format!("{name}: a UDF takes at least one argument"));
    }
    let returns = match &function.sig.output {
        syn::ReturnType::Type(_, ty) => rust_type(ty, true).map_err(|e| format!("{name}: {e}"))?,
        syn::ReturnType::Default => return Err(format!("{name}: a UDF returns a value")),
    };
    Ok(Manifest { name, args, returns })
}

fn quote_path_of(ty: &syn::Type) -> String {
    match ty {
        syn::Type::Path(path) => quote_path(path),
        _ => String::new(),
    }
}

/// Where the manifest of `library` is.
pub fn manifest_path(library: &Path) -> PathBuf {
    library.with_extension("udf.json")
}

/// A UDF loaded from its library.
pub struct LoadedUdf {
    manifest: Manifest,
    /// SHA-256 of the library's bytes and its manifest.
    hash: String,
    run: Run,
    /// Kept loaded while `run` may be called.
    _library: libloading::Library,
}

impl std::fmt::Debug for LoadedUdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoadedUdf({}, {})", self.manifest.name, &self.hash[..12])
    }
}

impl LoadedUdf {
    /// Loads the library at `path` with its manifest.
    pub fn load(path: &Path) -> Result<Arc<LoadedUdf>, UdfError> {
        let manifest_file = manifest_path(path);
        let text = std::fs::read_to_string(&manifest_file).map_err(|e| {
            error(
                path,
                format!("no manifest at {} ({e}); build it with `coldstream udf build`", manifest_file.display()),
            )
        })?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| error(&manifest_file, format!("not a UDF manifest: {e}")))?;
        let bytes = std::fs::read(path).map_err(|e| error(path, e))?;
        let mut digest = Sha256::new();
        digest.update(&bytes);
        digest.update(text.as_bytes());
        let hash = hex::encode(digest.finalize());
        // SAFETY: loading runs the library's initialisers. A UDF library is
        // code the operator chose to load, as a plugin of any host is.
        let library = unsafe { libloading::Library::new(path) }.map_err(|e| error(path, e))?;
        // SAFETY: `__run` is the symbol `#[udf]` exports, with this signature.
        let run: Run = unsafe { library.get::<Run>(b"__run") }
            .map(|symbol| *symbol)
            .map_err(|e| error(path, format!("not a UDF library (no __run): {e}")))?;
        Ok(Arc::new(LoadedUdf { manifest, hash, run, _library: library }))
    }

    /// Its name in SQL.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// What its source declares.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// SHA-256 of its library and manifest: a changed UDF has another.
    pub fn content_hash(&self) -> &str {
        &self.hash
    }

    /// Calls it on arrays of equal length, of the declared types.
    pub fn call(&self, args: &[ArrayRef]) -> Result<ArrayRef, String> {
        let name = &self.manifest.name;
        if args.len() != self.manifest.args.len() {
            return Err(format!("{name} takes {} arguments, not {}", self.manifest.args.len(), args.len()));
        }
        let rows = args[0].len();
        let mut arrays = Vec::with_capacity(args.len());
        for (arg, declared) in args.iter().zip(&self.manifest.args) {
            if arg.data_type() != &declared.udf_type.data_type() {
                return Err(format!(
                    "{name}: an argument of type {} where {:?} is declared",
                    arg.data_type(),
                    declared.udf_type
                ));
            }
            let (array, schema) = to_ffi(&arg.to_data()).map_err(|e| format!("{name}: {e}"))?;
            arrays.push(FfiArraySchema(array, schema));
        }
        // The plugin takes the vector and frees it with the C allocator.
        let passed = c_vector(arrays).ok_or_else(|| format!("{name}: out of memory for its arguments"))?;
        let run = self.run;
        // SAFETY: `passed` holds valid C data interface arrays, owned from
        // here by the plugin; a panic that escapes the plugin's own catch is
        // caught here.
        let result =
            std::panic::catch_unwind(move || unsafe { run(passed) }).map_err(|_| format!("the UDF {name} panicked"))?;
        let FfiArraySchema(array, schema) = match result {
            RunResult::Ok(returned) => returned,
            RunResult::Err => return Err(format!("the UDF {name} panicked")),
        };
        // SAFETY: the plugin built these with arrow's C data interface.
        let data = unsafe { from_ffi(array, &schema) }.map_err(|e| format!("the UDF {name} returned no array: {e}"))?;
        let returned = make_array(data);
        let declared = self.manifest.returns.udf_type.data_type();
        if returned.data_type() != &declared {
            return Err(format!(
                "the UDF {name} returned {} where its signature says {declared}",
                returned.data_type()
            ));
        }
        if returned.len() != rows {
            return Err(format!("the UDF {name} returned {} rows for {rows}", returned.len()));
        }
        if !self.manifest.returns.nullable && returned.null_count() > 0 && args.iter().all(|a| a.null_count() == 0) {
            return Err(format!("the UDF {name} returned nulls, which its signature does not allow"));
        }
        Ok(returned)
    }

    /// Calls it on one row of `i64`s (the restock policy's arguments).
    pub fn call_i64(&self, args: &[i64]) -> Result<Option<i64>, String> {
        let arrays: Vec<ArrayRef> =
            args.iter().map(|v| Arc::new(arrow::array::Int64Array::from(vec![*v])) as ArrayRef).collect();
        let returned = self.call(&arrays)?;
        let values = returned
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .ok_or_else(|| format!("the UDF {} does not return i64", self.name()))?;
        Ok(values.is_valid(0).then(|| values.value(0)))
    }
}

/// A loaded UDF as a DataFusion scalar function.
#[derive(Debug)]
struct SqlUdf {
    udf: Arc<LoadedUdf>,
    signature: DfSignature,
}

impl PartialEq for SqlUdf {
    fn eq(&self, other: &Self) -> bool {
        self.udf.hash == other.udf.hash
    }
}

impl Eq for SqlUdf {}

impl std::hash::Hash for SqlUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.udf.hash.hash(state);
    }
}

impl ScalarUDFImpl for SqlUdf {
    fn name(&self) -> &str {
        self.udf.name()
    }

    fn signature(&self) -> &DfSignature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(self.udf.manifest.returns.udf_type.data_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let arrays: Vec<ArrayRef> = if arrays.iter().all(|a| a.len() == args.number_rows) {
            arrays
        } else {
            args.args.iter().map(|a| a.to_array(args.number_rows)).collect::<DfResult<_>>()?
        };
        self.udf.call(&arrays).map(ColumnarValue::Array).map_err(DataFusionError::Execution)
    }
}

/// `udf` as a function for DataFusion.
pub fn scalar_udf(udf: &Arc<LoadedUdf>) -> ScalarUDF {
    let types = udf.manifest.args.iter().map(|a| a.udf_type.data_type()).collect();
    ScalarUDF::new_from_impl(SqlUdf {
        udf: Arc::clone(udf),
        signature: DfSignature::exact(types, Volatility::Immutable),
    })
}

/// Loads every library of `paths`.
pub fn load_all(paths: &[PathBuf]) -> Result<Vec<Arc<LoadedUdf>>, UdfError> {
    paths.iter().map(|path| LoadedUdf::load(path)).collect()
}

/// The library `cargo build` makes of the crate at `dir` in `target`.
fn library_of(dir: &Path, target: &Path, profile: &str) -> Result<PathBuf, UdfError> {
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).map_err(|e| error(dir, e))?;
    let parsed: toml::Value = toml::from_str(&manifest).map_err(|e| error(dir, format!("Cargo.toml: {e}")))?;
    let name = parsed
        .get("lib")
        .and_then(|lib| lib.get("name"))
        .or_else(|| parsed.get("package").and_then(|p| p.get("name")))
        .and_then(|n| n.as_str())
        .ok_or_else(|| error(dir, "Cargo.toml names no package"))?
        .replace('-', "_");
    let file = format!("{}{name}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    Ok(target.join(profile).join(file))
}

/// Builds the UDF crate at `dir` (release, into `target`, by default its
/// own `target/`), writes its manifest from `src/lib.rs`, and returns the
/// library's path.
pub fn build(dir: &Path, target: Option<&Path>) -> Result<PathBuf, UdfError> {
    let source = std::fs::read_to_string(dir.join("src/lib.rs")).map_err(|e| error(dir, format!("src/lib.rs: {e}")))?;
    let manifest = parse_signature(&source).map_err(|e| error(dir, e))?;
    let target = target.map_or_else(|| dir.join("target"), Path::to_path_buf);
    let status = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .env_remove("RUSTFLAGS")
        .status()
        .map_err(|e| error(dir, format!("running cargo: {e}")))?;
    if !status.success() {
        return Err(error(dir, format!("cargo build failed ({status})")));
    }
    let library = library_of(dir, &target, "release")?;
    if !library.is_file() {
        return Err(error(dir, format!("cargo built no {}; is the crate a cdylib?", library.display())));
    }
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| error(dir, e))?;
    std::fs::write(manifest_path(&library), json + "\n").map_err(|e| error(&library, e))?;
    Ok(library)
}

/// Writes a new UDF crate named `name` at `dir`.
pub fn scaffold(dir: &Path, name: &str) -> Result<(), UdfError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(error(dir, format!("{name:?} is not a SQL function name (lowercase letters, digits, _)")));
    }
    if dir.exists() {
        return Err(error(dir, "already exists"));
    }
    std::fs::create_dir_all(dir.join("src")).map_err(|e| error(dir, e))?;
    let cargo = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
         # A UDF is a workspace of its own: arroyo-udf-plugin pins arrow 51.\n[workspace]\n\n\
         [lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\narroyo-udf-plugin = \"0.2\"\n"
    );
    let lib = format!(
        "//! `{name}(x)`: a coldstream UDF, written as for Arroyo. Build it with\n\
         //! `coldstream udf build .` and load it with `coldstream query --udf <library>`.\n\n\
         use arroyo_udf_plugin::udf;\n\n\
         #[udf]\nfn {name}(x: i64) -> i64 {{\n    x\n}}\n"
    );
    std::fs::write(dir.join("Cargo.toml"), cargo).map_err(|e| error(dir, e))?;
    std::fs::write(dir.join("src/lib.rs"), lib).map_err(|e| error(dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(udf_type: UdfType, nullable: bool) -> Typed {
        Typed { udf_type, nullable }
    }

    #[test]
    fn the_signature_is_read_from_the_source_as_arroyo_writes_it() {
        let source = "use arroyo_udf_plugin::udf;\n#[udf]\nfn label(sku: &str, qty: Option<i64>, raw: &[u8]) -> Option<String> { None }\nfn helper() {}\n";
        let manifest = parse_signature(source).unwrap();
        assert_eq!(manifest.name, "label");
        assert_eq!(
            manifest.args,
            [typed(UdfType::Utf8, false), typed(UdfType::I64, true), typed(UdfType::Binary, false)]
        );
        assert_eq!(manifest.returns, typed(UdfType::Utf8, true));
    }

    #[test]
    fn what_a_udf_cannot_declare_is_refused_with_a_reason() {
        for (source, reason) in [
            ("fn f(x: i64) -> i64 { x }", "no #[udf] fn"),
            ("#[udf] fn f(x: String) -> i64 { 0 }", "&str, not String"),
            ("#[udf] fn f(x: Vec<i64>) -> i64 { 0 }", "aggregate"),
            ("#[udf] fn f(x: i64) -> &str { \"\" }", "owned"),
            ("#[udf] fn f() -> i64 { 0 }", "at least one argument"),
            ("#[udf] async fn f(x: i64) -> i64 { x }", "async"),
            ("#[udf] fn f(x: i64) -> i64 { x }\n#[udf] fn g(x: i64) -> i64 { x }", "several"),
            ("#[udf] fn f(x: std::time::SystemTime) -> i64 { 0 }", "not one coldstream passes"),
        ] {
            let refused = parse_signature(source).unwrap_err();
            assert!(refused.contains(reason), "{source}: {refused}");
        }
    }
}
