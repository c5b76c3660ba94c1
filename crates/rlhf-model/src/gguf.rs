//! In-house reader for GGUF v3 (and v2) files, as written by llama.cpp.
//!
//! A GGUF file is, little-endian throughout:
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count   x (key: string, value_type: u32, value)
//! tensor_count x (name: string, n_dims: u32, dims: u64 x n_dims, ggml_type: u32, offset: u64)
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor's `offset` is relative to the start of this section
//! ```
//!
//! where a string is `len: u64` followed by UTF-8 bytes, and an array value is
//! `elem_type: u32, count: u64, elements`.
//!
//! GGUF lists tensor dimensions fastest-varying first (`[ne0 = in, ne1 = out]` for a matrix), so
//! the stored bytes of a matrix are already `[out, in]` row-major: [`GgufTensorInfo::hf_shape`]
//! simply reverses the dimension list. Dequantisation ([`GgufFile::tensor_f32`]) follows ggml's
//! reference `dequantize_row_*` functions for F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K and Q6_K.
//!
//! [`llama_to_hf`] turns a llama-architecture file into an HF `config.json` object and HF-named
//! tensors, undoing llama.cpp's Q/K row permutation ([`unpermute_qk_rows`]) so that HF's
//! rotate-half RoPE applies; [`tokenizer_parts`] extracts the tokenizer metadata as plain data.
//!
//! The header and metadata are parsed once; tensor bytes are read from the file on demand (no
//! memory map: the workspace denies `unsafe`), so a [`GgufFile`] stays small.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use serde_json::json;

/// The GGUF magic, "GGUF" read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// Alignment of the tensor data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// How deep metadata arrays may nest (real files use arrays of scalars or of strings: depth 1).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Everything that can go wrong reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The operating system refused to open or read the file.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The file ended before a structure was complete.
    #[error("{}: file ends at byte {offset} while reading {what}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Offset where the read started.
        offset: u64,
        /// What was being read.
        what: String,
    },
    /// The first four bytes are not "GGUF".
    #[error("{}: not a GGUF file (magic {found:#010x}, expected {GGUF_MAGIC:#010x} \"GGUF\")", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first four bytes as a little-endian u32.
        found: u32,
    },
    /// A GGUF version this reader does not understand.
    #[error("{}: GGUF version {version} is not supported (expected 2 or 3; a huge number means a big-endian file)", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version field.
        version: u32,
    },
    /// A metadata value type id outside the GGUF spec.
    #[error("{}: metadata key `{key}` has unknown value type {value_type} (expected 0..=12)", path.display())]
    UnknownValueType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The type id found.
        value_type: u32,
    },
    /// A string that is not valid UTF-8.
    #[error("{}: {what} is not valid UTF-8", path.display())]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// Which string.
        what: String,
    },
    /// Metadata arrays nest deeper than [`MAX_ARRAY_DEPTH`].
    #[error("{}: metadata key `{key}` nests arrays more than {MAX_ARRAY_DEPTH} deep", path.display())]
    TooDeep {
        /// The file.
        path: PathBuf,
        /// The metadata key.
        key: String,
    },
    /// The same metadata key appears twice.
    #[error("{}: metadata key `{key}` appears more than once", path.display())]
    DuplicateKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// The same tensor name appears twice.
    #[error("{}: tensor `{tensor}` appears more than once", path.display())]
    DuplicateTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("{}: general.alignment = {alignment}, expected a non-zero power of two", path.display())]
    BadAlignment {
        /// The file.
        path: PathBuf,
        /// The value found.
        alignment: u64,
    },
    /// A required metadata key is absent.
    #[error("{}: metadata key `{key}` is missing (expected {expected})", path.display())]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What it should have held.
        expected: String,
    },
    /// A metadata key holds a value of the wrong type.
    #[error("{}: metadata key `{key}` holds {found}, expected {expected}", path.display())]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What it should hold.
        expected: String,
        /// What it holds.
        found: String,
    },
    /// A tensor that the caller asked for is absent.
    #[error("{}: tensor `{tensor}` is missing", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// A tensor whose type this reader cannot dequantise.
    #[error("{}: tensor `{tensor}` has ggml type {ggml_type}, which cannot be dequantised (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)", path.display())]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its type.
        ggml_type: GgmlType,
    },
    /// A tensor whose element count does not fill whole quantisation blocks.
    #[error("{}: tensor `{tensor}` has {n_elements} elements ({dims:?}), not a multiple of the {ggml_type} block size {block_size}", path.display())]
    PartialBlock {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its dims (GGUF order).
        dims: Vec<u64>,
        /// Its element count.
        n_elements: u64,
        /// Its type.
        ggml_type: GgmlType,
        /// The type's block size.
        block_size: u64,
    },
    /// A tensor's data runs past the end of the file.
    #[error("{}: tensor `{tensor}` occupies bytes {start}..{end} but the file has {file_len} bytes", path.display())]
    TensorOutOfBounds {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// First byte (absolute).
        start: u64,
        /// One past the last byte (absolute).
        end: u64,
        /// The file's length.
        file_len: u64,
    },
    /// A tensor has an unexpected shape.
    #[error("{}: tensor `{tensor}` has HF shape {found:?}, expected {expected}", path.display())]
    BadShape {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its shape, HF order.
        found: Vec<usize>,
        /// What was expected.
        expected: String,
    },
    /// `general.architecture` is not one that [`llama_to_hf`] converts.
    #[error("{}: general.architecture is `{found}`, expected `llama`", path.display())]
    UnsupportedArchitecture {
        /// The file.
        path: PathBuf,
        /// The architecture found.
        found: String,
    },
    /// A tensor with no HF counterpart in [`llama_to_hf`].
    #[error("{}: tensor `{tensor}` has no Hugging Face llama name", path.display())]
    UnmappedTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },
}

/// A ggml tensor element type (the `ggml_type` enum of ggml.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// 32-element blocks: f16 scale, 4-bit values offset by 8.
    Q4_0,
    /// 32-element blocks: f16 scale and min, 4-bit values.
    Q4_1,
    /// 32-element blocks with a fifth bit.
    Q5_0,
    /// 32-element blocks with a fifth bit and a min.
    Q5_1,
    /// 32-element blocks: f16 scale, i8 values.
    Q8_0,
    /// 32-element blocks: f16 scale and sum, i8 values.
    Q8_1,
    /// 256-element super-blocks, 2 bits.
    Q2K,
    /// 256-element super-blocks, 3 bits.
    Q3K,
    /// 256-element super-blocks, 4 bits, 6-bit sub-block scales and mins.
    Q4K,
    /// 256-element super-blocks, 5 bits.
    Q5K,
    /// 256-element super-blocks, 6 bits, i8 sub-block scales.
    Q6K,
    /// 256-element super-blocks, 8 bits (intermediate type).
    Q8K,
    /// 8-bit integer.
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 64-bit float.
    F64,
    /// bfloat16.
    BF16,
    /// Any other id (the IQ* family, ternary types, newer additions).
    Other(u32),
}

impl GgmlType {
    /// Maps ggml's numeric id.
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            15 => Self::Q8K,
            24 => Self::I8,
            25 => Self::I16,
            26 => Self::I32,
            27 => Self::I64,
            28 => Self::F64,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// ggml's numeric id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q8_1 => 9,
            Self::Q2K => 10,
            Self::Q3K => 11,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::Q8K => 15,
            Self::I8 => 24,
            Self::I16 => 25,
            Self::I32 => 26,
            Self::I64 => 27,
            Self::F64 => 28,
            Self::BF16 => 30,
            Self::Other(id) => id,
        }
    }

    /// `(elements per block, bytes per block)`, or `None` for an unknown type.
    pub fn block_layout(self) -> Option<(u64, u64)> {
        Some(match self {
            Self::F32 | Self::I32 => (1, 4),
            Self::F16 | Self::BF16 | Self::I16 => (1, 2),
            Self::I8 => (1, 1),
            Self::I64 | Self::F64 => (1, 8),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q8_1 => (32, 36),
            Self::Q2K => (256, 84),
            Self::Q3K => (256, 110),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
            Self::Q8K => (256, 292),
            Self::Other(_) => return None,
        })
    }

    /// Whether [`GgufFile::tensor_f32`] can dequantise this type.
    pub fn is_dequantisable(self) -> bool {
        matches!(
            self,
            Self::F32
                | Self::F16
                | Self::BF16
                | Self::Q8_0
                | Self::Q4_0
                | Self::Q4_1
                | Self::Q4K
                | Self::Q6K
        )
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q8_1 => "Q8_1",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
            Self::Q8K => "Q8_K",
            Self::I8 => "I8",
            Self::I16 => "I16",
            Self::I32 => "I32",
            Self::I64 => "I64",
            Self::F64 => "F64",
            Self::BF16 => "BF16",
            Self::Other(id) => return write!(f, "type id {id}"),
        };
        f.write_str(name)
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7.
    Bool(bool),
    /// Type 8.
    String(String),
    /// Type 9: elements all of one type.
    Array(Vec<GgufValue>),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl GgufValue {
    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::F32(_) => "f32",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F64(_) => "f64",
        }
    }

    /// Any non-negative integer value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(x) => Some(x.into()),
            Self::U16(x) => Some(x.into()),
            Self::U32(x) => Some(x.into()),
            Self::U64(x) => Some(x),
            Self::I8(x) => u64::try_from(x).ok(),
            Self::I16(x) => u64::try_from(x).ok(),
            Self::I32(x) => u64::try_from(x).ok(),
            Self::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    /// Any integer value that fits an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::U8(x) => Some(x.into()),
            Self::U16(x) => Some(x.into()),
            Self::U32(x) => Some(x.into()),
            Self::U64(x) => i64::try_from(x).ok(),
            Self::I8(x) => Some(x.into()),
            Self::I16(x) => Some(x.into()),
            Self::I32(x) => Some(x.into()),
            Self::I64(x) => Some(x),
            _ => None,
        }
    }

    /// Any numeric value as f64. An f32 is converted through its shortest decimal form, so
    /// `1e-5f32` gives `1e-5`, not `9.999999747378752e-6`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(x) => Some(x.to_string().parse().unwrap_or(f64::from(x))),
            Self::F64(x) => Some(x),
            _ => self.as_i64().map(|x| x as f64),
        }
    }

    /// A string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// A boolean value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// An array value.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor-info table.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// The tensor's GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in GGUF order: fastest-varying first (`[in, out]` for a matrix).
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Byte offset relative to the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Number of elements (`u64::MAX` when the dims' product overflows: a corrupt table).
    pub fn n_elements(&self) -> u64 {
        self.dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .unwrap_or(u64::MAX)
    }

    /// Shape in HF (row-major, slowest first) order: the GGUF dims reversed.
    pub fn hf_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Size of the stored data in bytes, when the type is known and the elements fill whole
    /// blocks.
    pub fn byte_len(&self) -> Option<u64> {
        let (block, size) = self.ggml_type.block_layout()?;
        let n = self.n_elements();
        // An overflowing size cannot fit in any file: `u64::MAX` fails the bounds check.
        n.is_multiple_of(block)
            .then(|| (n / block).saturating_mul(size))
    }
}

/// Where tensor bytes come from.
enum Source {
    /// Read from this file on demand.
    File,
    /// The whole file, in memory.
    Memory(Vec<u8>),
}

/// A parsed GGUF file: header, metadata and tensor table; tensor data is read on demand.
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    alignment: u64,
    data_offset: u64,
    file_len: u64,
    source: Source,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("file_len", &self.file_len)
            .finish()
    }
}

/// A `Read` that counts bytes and turns failures into [`GgufError`]s.
struct Parser<'p, R> {
    inner: R,
    pos: u64,
    path: &'p Path,
}

impl<R: Read> Parser<'_, R> {
    fn bytes(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<Vec<u8>, GgufError> {
        let start = self.pos;
        let mut buf = Vec::new();
        let got = (&mut self.inner)
            .take(n)
            .read_to_end(&mut buf)
            .map_err(|source| GgufError::Io {
                path: self.path.into(),
                what: what(),
                source,
            })?;
        self.pos += got as u64;
        if (got as u64) < n {
            return Err(GgufError::Truncated {
                path: self.path.into(),
                offset: start,
                what: what(),
            });
        }
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let start = self.pos;
        let mut buf = [0u8; N];
        match self.inner.read_exact(&mut buf) {
            Ok(()) => {
                self.pos += N as u64;
                Ok(buf)
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(GgufError::Truncated {
                path: self.path.into(),
                offset: start,
                what: what(),
            }),
            Err(source) => Err(GgufError::Io {
                path: self.path.into(),
                what: what(),
                source,
            }),
        }
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        let bytes = self.bytes(len, what)?;
        String::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 {
            path: self.path.into(),
            what: what(),
        })
    }

    /// One metadata value; `depth` counts the arrays it sits in (recursion is bounded, so a
    /// file of nested arrays cannot overflow the stack).
    fn value(&mut self, value_type: u32, key: &str, depth: usize) -> Result<GgufValue, GgufError> {
        let what = || format!("value of metadata key `{key}`");
        Ok(match value_type {
            0 => GgufValue::U8(self.array::<1>(&what)?[0]),
            1 => GgufValue::I8(i8::from_le_bytes(self.array::<1>(&what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array::<2>(&what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array::<2>(&what)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array::<4>(&what)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array::<4>(&what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array::<4>(&what)?)),
            7 => GgufValue::Bool(self.array::<1>(&what)?[0] != 0),
            8 => GgufValue::String(self.string(&what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::TooDeep {
                        path: self.path.into(),
                        key: key.into(),
                    });
                }
                let elem_type = self.u32(&|| format!("array element type of `{key}`"))?;
                let count = self.u64(&|| format!("array length of `{key}`"))?;
                if elem_type > 12 {
                    return Err(GgufError::UnknownValueType {
                        path: self.path.into(),
                        key: key.into(),
                        value_type: elem_type,
                    });
                }
                // Do not trust `count` for the allocation: a corrupt file would abort.
                let mut items = Vec::with_capacity(count.min(1 << 20) as usize);
                for _ in 0..count {
                    items.push(self.value(elem_type, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array::<8>(&what)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array::<8>(&what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array::<8>(&what)?)),
            other => {
                return Err(GgufError::UnknownValueType {
                    path: self.path.into(),
                    key: key.into(),
                    value_type: other,
                });
            }
        })
    }
}

/// Header, metadata and tensor table as parsed, before the data section.
struct Parsed {
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    alignment: u64,
    data_offset: u64,
}

fn parse<R: Read>(reader: R, path: &Path) -> Result<Parsed, GgufError> {
    let mut p = Parser {
        inner: reader,
        pos: 0,
        path,
    };
    let magic = p.u32(&|| "magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic {
            path: path.into(),
            found: magic,
        });
    }
    let version = p.u32(&|| "version".into())?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion {
            path: path.into(),
            version,
        });
    }
    let n_tensors = p.u64(&|| "tensor count".into())?;
    let n_kv = p.u64(&|| "metadata count".into())?;

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = p.string(&|| format!("key of metadata entry {i}"))?;
        let value_type = p.u32(&|| format!("value type of metadata key `{key}`"))?;
        let value = p.value(value_type, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(GgufError::DuplicateKey {
                path: path.into(),
                key,
            });
        }
    }

    let mut tensors: Vec<GgufTensorInfo> = Vec::with_capacity(n_tensors.min(1 << 16) as usize);
    let mut seen = std::collections::HashSet::new();
    for i in 0..n_tensors {
        let name = p.string(&|| format!("name of tensor {i}"))?;
        let n_dims = p.u32(&|| format!("dimension count of tensor `{name}`"))?;
        let mut dims = Vec::with_capacity(n_dims.min(8) as usize);
        for d in 0..n_dims {
            dims.push(p.u64(&|| format!("dimension {d} of tensor `{name}`"))?);
        }
        let ggml_type = GgmlType::from_id(p.u32(&|| format!("type of tensor `{name}`"))?);
        let offset = p.u64(&|| format!("data offset of tensor `{name}`"))?;
        if !seen.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor {
                path: path.into(),
                tensor: name,
            });
        }
        tensors.push(GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => {
            let a = v.as_u64().ok_or_else(|| GgufError::WrongType {
                path: path.into(),
                key: "general.alignment".into(),
                expected: "an unsigned integer".into(),
                found: v.type_name().into(),
            })?;
            if a == 0 || !a.is_power_of_two() {
                return Err(GgufError::BadAlignment {
                    path: path.into(),
                    alignment: a,
                });
            }
            a
        }
    };
    let data_offset = p.pos.div_ceil(alignment) * alignment;
    Ok(Parsed {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

impl GgufFile {
    /// Parses the header, metadata and tensor table of the file at `path`. Tensor data is read
    /// later, on demand.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io_err = |what: &str| {
            let path = path.to_path_buf();
            let what = what.to_string();
            move |source| GgufError::Io { path, what, source }
        };
        let file = File::open(path).map_err(io_err("opening"))?;
        let file_len = file.metadata().map_err(io_err("reading metadata"))?.len();
        let parsed = parse(BufReader::with_capacity(1 << 20, file), path)?;
        Self::assemble(path.to_path_buf(), parsed, file_len, Source::File)
    }

    /// Parses a GGUF image held in memory; `path` only labels error messages.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self, GgufError> {
        let path = path.into();
        let parsed = parse(bytes.as_slice(), &path)?;
        let file_len = bytes.len() as u64;
        Self::assemble(path, parsed, file_len, Source::Memory(bytes))
    }

    fn assemble(
        path: PathBuf,
        parsed: Parsed,
        file_len: u64,
        source: Source,
    ) -> Result<Self, GgufError> {
        let file = Self {
            path,
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            file_len,
            source,
        };
        // Check every tensor of known size fits in the file, so later reads only fail on I/O.
        for t in &file.tensors {
            if let Some(len) = t.byte_len() {
                let start = file.data_offset.saturating_add(t.offset);
                let end = start.saturating_add(len);
                if end > file_len {
                    return Err(GgufError::TensorOutOfBounds {
                        path: file.path.clone(),
                        tensor: t.name.clone(),
                        start,
                        end,
                        file_len,
                    });
                }
            }
        }
        Ok(file)
    }

    /// The file (or the label given to [`GgufFile::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of the data section (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata, sorted by key.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn wrong_type(&self, key: &str, expected: &str, v: &GgufValue) -> GgufError {
        GgufError::WrongType {
            path: self.path.clone(),
            key: key.into(),
            expected: expected.into(),
            found: v.type_name().into(),
        }
    }

    fn missing(&self, key: &str, expected: &str) -> GgufError {
        GgufError::MissingKey {
            path: self.path.clone(),
            key: key.into(),
            expected: expected.into(),
        }
    }

    /// An optional unsigned integer (any integer type); wrong type is an error.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| self.wrong_type(key, "a non-negative integer", v))
            })
            .transpose()
    }

    /// A required unsigned integer.
    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_u64(key)?
            .ok_or_else(|| self.missing(key, "a non-negative integer"))
    }

    /// An optional number (any numeric type); wrong type is an error.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.wrong_type(key, "a number", v))
            })
            .transpose()
    }

    /// An optional string; wrong type is an error.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.wrong_type(key, "a string", v))
            })
            .transpose()
    }

    /// A required string.
    pub fn require_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get_str(key)?
            .ok_or_else(|| self.missing(key, "a string"))
    }

    /// An optional boolean; wrong type is an error.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.wrong_type(key, "a bool", v)))
            .transpose()
    }

    /// An optional array; wrong type is an error.
    pub fn get_array(&self, key: &str) -> Result<Option<&[GgufValue]>, GgufError> {
        self.get(key)
            .map(|v| {
                v.as_array()
                    .ok_or_else(|| self.wrong_type(key, "an array", v))
            })
            .transpose()
    }

    /// An optional array of strings.
    pub fn get_string_array(&self, key: &str) -> Result<Option<Vec<String>>, GgufError> {
        let Some(items) = self.get_array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| self.wrong_type(key, "an array of strings", v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// An optional array of integers as i32.
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>, GgufError> {
        let Some(items) = self.get_array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| {
                v.as_i64()
                    .and_then(|x| i32::try_from(x).ok())
                    .ok_or_else(|| self.wrong_type(key, "an array of 32-bit integers", v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// One tensor's info.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    fn require_tensor(&self, name: &str) -> Result<&GgufTensorInfo, GgufError> {
        self.tensor(name).ok_or_else(|| GgufError::MissingTensor {
            path: self.path.clone(),
            tensor: name.into(),
        })
    }

    /// The raw stored bytes of a tensor (its type must have a known block layout).
    pub fn tensor_bytes(&self, name: &str) -> Result<Vec<u8>, GgufError> {
        let info = self.require_tensor(name)?;
        self.read_bytes(info)
    }

    fn read_bytes(&self, info: &GgufTensorInfo) -> Result<Vec<u8>, GgufError> {
        let len = self.checked_len(info)?;
        let start = self.data_offset + info.offset;
        match &self.source {
            Source::Memory(bytes) => {
                // Bounds were checked in `assemble`.
                Ok(bytes[start as usize..(start + len) as usize].to_vec())
            }
            Source::File => {
                let what = || format!("data of tensor `{}`", info.name);
                let io = |source| GgufError::Io {
                    path: self.path.clone(),
                    what: what(),
                    source,
                };
                let mut f = File::open(&self.path).map_err(io)?;
                f.seek(SeekFrom::Start(start)).map_err(io)?;
                let mut p = Parser {
                    inner: f,
                    pos: start,
                    path: &self.path,
                };
                p.bytes(len, &what)
            }
        }
    }

    fn checked_len(&self, info: &GgufTensorInfo) -> Result<u64, GgufError> {
        let Some((block, _)) = info.ggml_type.block_layout() else {
            return Err(GgufError::UnsupportedType {
                path: self.path.clone(),
                tensor: info.name.clone(),
                ggml_type: info.ggml_type,
            });
        };
        info.byte_len().ok_or_else(|| GgufError::PartialBlock {
            path: self.path.clone(),
            tensor: info.name.clone(),
            dims: info.dims.clone(),
            n_elements: info.n_elements(),
            ggml_type: info.ggml_type,
            block_size: block,
        })
    }

    /// A tensor dequantised to f32, with its shape in HF order (GGUF dims reversed; for a
    /// matrix `[out, in]` row-major).
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), GgufError> {
        let info = self.require_tensor(name)?;
        if !info.ggml_type.is_dequantisable() {
            return Err(GgufError::UnsupportedType {
                path: self.path.clone(),
                tensor: info.name.clone(),
                ggml_type: info.ggml_type,
            });
        }
        let bytes = self.read_bytes(info)?;
        let n = info.n_elements() as usize;
        let data =
            dequantize(info.ggml_type, &bytes, n).ok_or_else(|| GgufError::UnsupportedType {
                path: self.path.clone(),
                tensor: info.name.clone(),
                ggml_type: info.ggml_type,
            })?;
        Ok((info.hf_shape(), data))
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantises `n` elements of type `ty` from `data` (which must hold exactly the right number
/// of bytes), following ggml's reference `dequantize_row_*`. `None` for an unsupported type.
fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Option<Vec<f32>> {
    let mut y = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => y.extend(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => y.extend(
            data.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::BF16 => y.extend(
            data.chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            // struct { f16 d; i8 qs[32]; }
            for b in data.chunks_exact(34) {
                let d = f16_at(b, 0);
                y.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GgmlType::Q4_0 => {
            // struct { f16 d; u8 qs[16]; }: low nibbles are elements 0..16, high 16..32.
            for b in data.chunks_exact(18) {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                y.extend(qs.iter().map(|&q| f32::from((q & 0x0F) as i8 - 8) * d));
                y.extend(qs.iter().map(|&q| f32::from((q >> 4) as i8 - 8) * d));
            }
        }
        GgmlType::Q4_1 => {
            // struct { f16 d; f16 m; u8 qs[16]; }
            for b in data.chunks_exact(20) {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let qs = &b[4..20];
                y.extend(qs.iter().map(|&q| f32::from(q & 0x0F) * d + m));
                y.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
        }
        GgmlType::Q4K => {
            // struct { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }
            for b in data.chunks_exact(144) {
                let d = f16_at(b, 0);
                let min = f16_at(b, 2);
                let scales = &b[4..16];
                let qs = &b[16..144];
                for (chunk, q) in qs.chunks_exact(32).enumerate() {
                    let is = 2 * chunk;
                    let (sc1, m1) = get_scale_min_k4(is, scales);
                    let (sc2, m2) = get_scale_min_k4(is + 1, scales);
                    let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
                    let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
                    y.extend(q.iter().map(|&x| d1 * f32::from(x & 0x0F) - m1));
                    y.extend(q.iter().map(|&x| d2 * f32::from(x >> 4) - m2));
                }
            }
        }
        GgmlType::Q6K => {
            // struct { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }
            for b in data.chunks_exact(210) {
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let ql = &b[64 * half..64 * half + 64];
                    let qh = &b[128 + 32 * half..128 + 32 * half + 32];
                    let sc = &b[192 + 8 * half..192 + 8 * half + 8];
                    let mut out = [0f32; 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
                        let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                        let s = |k: usize| d * f32::from(sc[k] as i8);
                        out[l] = s(is) * f32::from(q1);
                        out[l + 32] = s(is + 2) * f32::from(q2);
                        out[l + 64] = s(is + 4) * f32::from(q3);
                        out[l + 96] = s(is + 6) * f32::from(q4);
                    }
                    y.extend_from_slice(&out);
                }
            }
        }
        _ => return None,
    }
    debug_assert_eq!(y.len(), n, "dequantised element count");
    Some(y)
}

/// ggml's `get_scale_min_k4`: the `j`-th (0..8) 6-bit scale and min of a Q4_K/Q5_K block.
/// Scales 0..4 are the low 6 bits of bytes 0..4 (mins: bytes 4..8); scales 4..8 take their low
/// 4 bits from the nibbles of bytes 8..12 and their top 2 bits from the top of bytes 0..4
/// (mins: from bytes 4..8).
fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Undoes llama.cpp's Q/K row permutation on a row-major `[rows, cols]` matrix (or a bias,
/// `cols = 1`).
///
/// llama.cpp's `convert_hf_to_gguf.py` stores `w.reshape(n_head, 2, rows / n_head / 2, cols)
/// .swapaxes(1, 2).reshape(rows, cols)`, i.e. within each head the row `s * half + j` (HF's
/// rotate-half halves) moves to `2 * j + s` (interleaved pairs). This puts it back: output row
/// `h * head_dim + s * half + j` is input row `h * head_dim + 2 * j + s`.
///
/// # Panics
/// If `rows` is not a multiple of `2 * n_head` or `data.len() != rows * cols` (callers check).
pub fn unpermute_qk_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    assert!(
        n_head > 0 && rows.is_multiple_of(2 * n_head),
        "rows {rows} not divisible by 2 * n_head {n_head}"
    );
    assert_eq!(data.len(), rows * cols, "data length vs rows * cols");
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for s in 0..2 {
            for j in 0..half {
                let dst = h * head_dim + s * half + j;
                let src = h * head_dim + 2 * j + s;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// What a GGUF tensor becomes in HF naming.
enum Mapped {
    /// A plain rename.
    Plain(String),
    /// A rename plus the Q/K row un-permutation with this many heads.
    Qk(String, usize),
    /// Dropped (`rope_freqs.weight`: RoPE frequencies the config already implies).
    Skip,
}

fn map_llama_name(name: &str, n_head: usize, n_kv_head: usize) -> Option<Mapped> {
    let (stem, kind) = name.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let plain = |s: String| Some(Mapped::Plain(format!("{s}.{kind}")));
    match stem {
        "token_embd" => return plain("model.embed_tokens".into()),
        "output_norm" => return plain("model.norm".into()),
        "output" => return plain("lm_head".into()),
        "rope_freqs" => return Some(Mapped::Skip),
        _ => {}
    }
    let rest = stem.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let p = format!("model.layers.{layer}");
    match part {
        "attn_q" => Some(Mapped::Qk(format!("{p}.self_attn.q_proj.{kind}"), n_head)),
        "attn_k" => Some(Mapped::Qk(
            format!("{p}.self_attn.k_proj.{kind}"),
            n_kv_head,
        )),
        "attn_v" => plain(format!("{p}.self_attn.v_proj")),
        "attn_output" => plain(format!("{p}.self_attn.o_proj")),
        "ffn_gate" => plain(format!("{p}.mlp.gate_proj")),
        "ffn_up" => plain(format!("{p}.mlp.up_proj")),
        "ffn_down" => plain(format!("{p}.mlp.down_proj")),
        "attn_norm" => plain(format!("{p}.input_layernorm")),
        "ffn_norm" => plain(format!("{p}.post_attention_layernorm")),
        _ => None,
    }
}

/// The GGUF name of each HF tensor name [`llama_to_hf`] produces from `file` (for error
/// messages that name the tensor as the file spells it).
pub fn gguf_names(file: &GgufFile) -> BTreeMap<String, String> {
    file.tensors
        .iter()
        .filter_map(|t| match map_llama_name(&t.name, 1, 1)? {
            Mapped::Plain(hf) | Mapped::Qk(hf, _) => Some((hf, t.name.clone())),
            Mapped::Skip => None,
        })
        .collect()
}

/// Converts a llama-architecture GGUF into an HF `config.json`-style object and HF-named f32
/// tensors `(name, shape [out, in], data)`.
///
/// The Q and K projections (weights and biases) have llama.cpp's row permutation undone (K with
/// the KV head count), so HF's rotate-half RoPE applies. `tie_word_embeddings` is true when the
/// file has no `output.weight`; then no `lm_head.weight` is produced. `rope_freqs.weight` is
/// dropped; any other tensor without an HF name is an error.
pub fn llama_to_hf(
    file: &GgufFile,
) -> Result<(serde_json::Value, Vec<(String, Vec<usize>, Vec<f32>)>), GgufError> {
    let arch = file.require_str("general.architecture")?;
    if arch != "llama" {
        return Err(GgufError::UnsupportedArchitecture {
            path: file.path.clone(),
            found: arch.into(),
        });
    }
    let key = |k: &str| format!("llama.{k}");
    let as_usize = |x: u64| x as usize;
    let n_layers = as_usize(file.require_u64(&key("block_count"))?);
    let hidden = as_usize(file.require_u64(&key("embedding_length"))?);
    let ffn = as_usize(file.require_u64(&key("feed_forward_length"))?);
    let n_head = as_usize(file.require_u64(&key("attention.head_count"))?);
    let n_kv_head = file
        .get_u64(&key("attention.head_count_kv"))?
        .map_or(n_head, as_usize);
    let head_dim = match file.get_u64(&key("attention.key_length"))? {
        Some(k) => as_usize(k),
        None => hidden / n_head.max(1),
    };
    let eps = file
        .get_f64(&key("attention.layer_norm_rms_epsilon"))?
        .unwrap_or(1e-5);
    let rope_theta = file.get_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0);
    let ctx = file.get_u64(&key("context_length"))?.unwrap_or(2048);

    let embd = file.require_tensor("token_embd.weight")?;
    let embd_shape = embd.hf_shape();
    let vocab = match file.get_u64(&key("vocab_size"))? {
        Some(v) => as_usize(v),
        None => match file.get_array("tokenizer.ggml.tokens")? {
            Some(t) => t.len(),
            None => embd_shape.first().copied().unwrap_or(0),
        },
    };
    if embd_shape != [vocab, hidden] {
        return Err(GgufError::BadShape {
            path: file.path.clone(),
            tensor: embd.name.clone(),
            found: embd_shape,
            expected: format!("[vocab {vocab}, hidden {hidden}]"),
        });
    }
    let tied = file.tensor("output.weight").is_none();
    let id = |k: &str| -> Result<serde_json::Value, GgufError> {
        Ok(file
            .get_u64(&format!("tokenizer.ggml.{k}"))?
            .map_or(serde_json::Value::Null, |x| json!(x)))
    };
    let has_attn_bias = file.tensor("blk.0.attn_q.bias").is_some();
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv_head,
        "head_dim": head_dim,
        "rms_norm_eps": eps,
        "rope_theta": rope_theta,
        "vocab_size": vocab,
        "max_position_embeddings": ctx,
        "tie_word_embeddings": tied,
        "attention_bias": has_attn_bias,
        "mlp_bias": false,
        "bos_token_id": id("bos_token_id")?,
        "eos_token_id": id("eos_token_id")?,
        "pad_token_id": id("padding_token_id")?,
        "torch_dtype": "float32",
    });

    let mut out = Vec::with_capacity(file.tensors.len());
    for info in &file.tensors {
        let Some(mapped) = map_llama_name(&info.name, n_head, n_kv_head) else {
            return Err(GgufError::UnmappedTensor {
                path: file.path.clone(),
                tensor: info.name.clone(),
            });
        };
        let (hf_name, heads) = match mapped {
            Mapped::Skip => continue,
            Mapped::Plain(n) => (n, None),
            Mapped::Qk(n, h) => (n, Some(h)),
        };
        let (shape, data) = file.tensor_f32(&info.name)?;
        let data = match heads {
            None => data,
            Some(h) => {
                let rows = shape.first().copied().unwrap_or(0);
                let cols = shape.get(1).copied().unwrap_or(1);
                if shape.len() > 2 || h == 0 || rows != h * head_dim || !rows.is_multiple_of(2 * h)
                {
                    return Err(GgufError::BadShape {
                        path: file.path.clone(),
                        tensor: info.name.clone(),
                        found: shape,
                        expected: format!(
                            "[{h} heads x head_dim {head_dim}, ..] with an even head_dim"
                        ),
                    });
                }
                unpermute_qk_rows(&data, rows, cols, h)
            }
        };
        out.push((hf_name, shape, data));
    }
    Ok((config, out))
}

/// The tokenizer stored in a GGUF file's `tokenizer.*` metadata, as plain data.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GgufTokenizerParts {
    /// `tokenizer.ggml.model` (`gpt2` for byte-level BPE, `llama` for SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer flavour (`smollm`, `llama-bpe`, ...).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.merges` (`"a b"` pairs, highest priority first); empty when absent.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.token_type` per id (1 normal, 2 unknown, 3 control, 4 user-defined,
    /// 5 unused, 6 byte); empty when absent.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.chat_template` (a Jinja template), when present.
    pub chat_template: Option<String>,
}

/// Extracts the tokenizer metadata (`tokenizer.ggml.*`) of a GGUF file.
pub fn tokenizer_parts(file: &GgufFile) -> Result<GgufTokenizerParts, GgufError> {
    let tokens = file
        .get_string_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| file.missing("tokenizer.ggml.tokens", "an array of strings"))?;
    let id = |k: &str| -> Result<Option<u32>, GgufError> {
        let key = format!("tokenizer.ggml.{k}");
        match file.get_u64(&key)? {
            None => Ok(None),
            Some(x) => u32::try_from(x)
                .map(Some)
                .map_err(|_| GgufError::WrongType {
                    path: file.path.clone(),
                    key,
                    expected: "a token id below 2^32".into(),
                    found: x.to_string(),
                }),
        }
    };
    Ok(GgufTokenizerParts {
        model: file.require_str("tokenizer.ggml.model")?.to_owned(),
        pre: file.get_str("tokenizer.ggml.pre")?.map(str::to_owned),
        merges: file
            .get_string_array("tokenizer.ggml.merges")?
            .unwrap_or_default(),
        token_types: file
            .get_i32_array("tokenizer.ggml.token_type")?
            .unwrap_or_default(),
        tokens,
        bos_id: id("bos_token_id")?,
        eos_id: id("eos_token_id")?,
        pad_id: id("padding_token_id")?,
        unk_id: id("unknown_token_id")?,
        add_bos: file.get_bool("tokenizer.ggml.add_bos_token")?,
        chat_template: file.get_str("tokenizer.chat_template")?.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- a tiny GGUF writer --------------------------------------------------------------

    fn put_str(buf: &mut Vec<u8>, s: &str) {
        buf.extend((s.len() as u64).to_le_bytes());
        buf.extend(s.as_bytes());
    }

    fn put_value(buf: &mut Vec<u8>, v: &GgufValue) {
        match v {
            GgufValue::U8(x) => buf.push(*x),
            GgufValue::I8(x) => buf.extend(x.to_le_bytes()),
            GgufValue::U16(x) => buf.extend(x.to_le_bytes()),
            GgufValue::I16(x) => buf.extend(x.to_le_bytes()),
            GgufValue::U32(x) => buf.extend(x.to_le_bytes()),
            GgufValue::I32(x) => buf.extend(x.to_le_bytes()),
            GgufValue::F32(x) => buf.extend(x.to_le_bytes()),
            GgufValue::Bool(x) => buf.push(u8::from(*x)),
            GgufValue::String(s) => put_str(buf, s),
            GgufValue::Array(items) => {
                let elem = items.first().map_or(0, type_id);
                buf.extend(elem.to_le_bytes());
                buf.extend((items.len() as u64).to_le_bytes());
                for it in items {
                    put_value(buf, it);
                }
            }
            GgufValue::U64(x) => buf.extend(x.to_le_bytes()),
            GgufValue::I64(x) => buf.extend(x.to_le_bytes()),
            GgufValue::F64(x) => buf.extend(x.to_le_bytes()),
        }
    }

    fn type_id(v: &GgufValue) -> u32 {
        match v {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }

    /// Writes a GGUF v3 image: `tensors` are (name, GGUF dims, type, raw bytes).
    fn write_gguf(
        kv: &[(&str, GgufValue)],
        tensors: &[(&str, Vec<u64>, GgmlType, Vec<u8>)],
        alignment: u64,
    ) -> Vec<u8> {
        let mut buf = Vec::new();
        buf.extend(b"GGUF");
        buf.extend(3u32.to_le_bytes());
        buf.extend((tensors.len() as u64).to_le_bytes());
        buf.extend((kv.len() as u64).to_le_bytes());
        for (k, v) in kv {
            put_str(&mut buf, k);
            buf.extend(type_id(v).to_le_bytes());
            put_value(&mut buf, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in tensors {
            put_str(&mut buf, name);
            buf.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                buf.extend(d.to_le_bytes());
            }
            buf.extend(ty.id().to_le_bytes());
            buf.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() as u64).div_ceil(alignment) * alignment;
        }
        let data_start = (buf.len() as u64).div_ceil(alignment) * alignment;
        buf.resize(data_start as usize, 0);
        for ((_, _, _, data), off) in tensors.iter().zip(&offsets) {
            buf.resize((data_start + off) as usize, 0);
            buf.extend(data);
        }
        buf
    }

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    /// A file whose one metadata value is an array nested `depth` deep (written by hand: the
    /// recursive writer would itself overflow on the deep case).
    fn nested(depth: usize) -> Vec<u8> {
        let mut buf = Vec::new();
        buf.extend(b"GGUF");
        buf.extend(3u32.to_le_bytes());
        buf.extend(0u64.to_le_bytes());
        buf.extend(1u64.to_le_bytes());
        put_str(&mut buf, "deep");
        buf.extend(9u32.to_le_bytes());
        for _ in 1..depth {
            buf.extend(9u32.to_le_bytes());
            buf.extend(1u64.to_le_bytes());
        }
        buf.extend(4u32.to_le_bytes());
        buf.extend(0u64.to_le_bytes());
        buf
    }

    #[test]
    fn deeply_nested_arrays_are_an_error_not_a_stack_overflow() {
        GgufFile::from_bytes("ok.gguf", nested(3)).expect("shallow nesting reads");
        let e = GgufFile::from_bytes("deep.gguf", nested(1_000_000)).unwrap_err();
        assert!(matches!(e, GgufError::TooDeep { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("`deep` nests arrays more than 8 deep"),
            "{e}"
        );
    }

    // ---- block dequantisation against hand-computed numbers ------------------------------

    #[test]
    fn q8_0_block() {
        let mut b = h(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let y = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!(y[0], -8.0); // (0 - 16) * 0.5
        assert_eq!(y[16], 0.0);
        assert_eq!(y[31], 7.5); // (31 - 16) * 0.5
    }

    #[test]
    fn q4_0_block() {
        // qs[j] = low nibble j, high nibble 15 - j; d = 2.
        let mut b = h(2.0).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        assert_eq!(y[0], -16.0); // (0 - 8) * 2
        assert_eq!(y[15], 14.0); // (15 - 8) * 2
        assert_eq!(y[16], 14.0); // high nibble of qs[0] = 15
        assert_eq!(y[31], -16.0); // high nibble of qs[15] = 0
        assert_eq!(y[8], 0.0);
    }

    #[test]
    fn q4_1_block() {
        // d = 0.25, m = -1: y = q * 0.25 - 1.
        let mut b = h(0.25).to_vec();
        b.extend(h(-1.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        assert_eq!(y[0], -1.0);
        assert_eq!(y[4], 0.0); // 4 * 0.25 - 1
        assert_eq!(y[15], 2.75);
        assert_eq!(y[16], 2.75); // q = 15
        assert_eq!(y[27], 0.0); // qs[11] high nibble = 4
    }

    #[test]
    fn q4_k_block() {
        // d = 1, dmin = 0.5. Sub-block scales/mins (8 of each, 6 bits):
        //   sc = [1, 2, 3, 4, 5, 6, 7, 60], m = [0, 1, 2, 3, 4, 5, 6, 33]
        let sc = [1u8, 2, 3, 4, 5, 6, 7, 60];
        let mn = [0u8, 1, 2, 3, 4, 5, 6, 33];
        let mut scales = [0u8; 12];
        for j in 0..4 {
            scales[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            scales[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            scales[j + 8] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4);
        }
        for j in 0..8 {
            assert_eq!(get_scale_min_k4(j, &scales), (sc[j], mn[j]), "j = {j}");
        }
        // qs: the 4 chunks of 32 bytes; byte l of chunk c = (l % 16) | (((l + c) % 16) << 4).
        let mut b = h(1.0).to_vec();
        b.extend(h(0.5));
        b.extend(scales);
        for c in 0..4 {
            b.extend((0..32).map(|l| (l % 16) as u8 | ((((l + c) % 16) as u8) << 4)));
        }
        let y = dequantize(GgmlType::Q4K, &b, 256).unwrap();
        // Element 64*c + l (l < 32) is sub-block 2c, low nibble; 64*c + 32 + l is 2c+1, high.
        // e.g. y[3] = 1*1*3 - 0.5*0 = 3; y[32+3] = 2*3 - 0.5*1 = 5.5
        assert_eq!(y[3], 3.0);
        assert_eq!(y[35], 5.5);
        // chunk 3, l = 5: low = 5, sub-block 6: 7*5 - 0.5*6 = 32
        assert_eq!(y[192 + 5], 32.0);
        // chunk 3, l = 5: high = (5+3)%16 = 8, sub-block 7: 60*8 - 0.5*33 = 463.5
        assert_eq!(y[224 + 5], 463.5);
        // chunk 1, l = 20: high = (21)%16 = 5, sub-block 3: 4*5 - 0.5*3 = 18.5
        assert_eq!(y[64 + 32 + 20], 18.5);
    }

    #[test]
    fn q6_k_block() {
        // All 256 six-bit values q = 32 + 1 (so q - 32 = 1) except hand-placed ones, scales
        // sc[k] = k + 1 for k < 15 and sc[15] = -2, d = 0.5.
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        // Encode: element e in half n (128 each); within, l = e % 32, group g = e / 32 (0..4).
        let mut vals = [33u8; 256];
        vals[0] = 0; // q - 32 = -32
        vals[40] = 63; // q - 32 = 31
        vals[128 + 96 + 17] = 50; // half 1, group 3, l 17
        for n in 0..2 {
            for l in 0..32 {
                let v = |g: usize| vals[128 * n + 32 * g + l];
                ql[64 * n + l] = (v(0) & 0x0F) | ((v(2) & 0x0F) << 4);
                ql[64 * n + l + 32] = (v(1) & 0x0F) | ((v(3) & 0x0F) << 4);
                qh[32 * n + l] =
                    (v(0) >> 4) | ((v(1) >> 4) << 2) | ((v(2) >> 4) << 4) | ((v(3) >> 4) << 6);
            }
        }
        let mut scales = [0u8; 16];
        for (k, s) in scales.iter_mut().enumerate() {
            *s = (k as i8 + 1) as u8;
        }
        scales[15] = (-2i8) as u8;
        let mut b = ql.to_vec();
        b.extend(qh);
        b.extend(scales);
        b.extend(h(0.5));
        assert_eq!(b.len(), 210);
        let y = dequantize(GgmlType::Q6K, &b, 256).unwrap();
        // Element 0: half 0, l 0 -> scale index 0 (sc = 1): 0.5 * 1 * -32 = -16
        assert_eq!(y[0], -16.0);
        // Element 40: half 0, group 1, l 8 -> scale index is(=0) + 2 = 2 (sc = 3): 0.5*3*31
        assert_eq!(y[40], 46.5);
        // Element 20: group 0, l 20 -> scale index 1 (sc = 2): 0.5 * 2 * 1 = 1
        assert_eq!(y[20], 1.0);
        // Element 128+96+17: half 1 (scales 8..16), group 3, l 17 -> 8 + 1 + 6 = 15 (sc = -2):
        // 0.5 * -2 * (50 - 32) = -18
        assert_eq!(y[128 + 96 + 17], -18.0);
        // Element 128+64+3: half 1, group 2, l 3 -> 8 + 0 + 4 = 12 (sc = 13): 0.5*13*1 = 6.5
        assert_eq!(y[128 + 64 + 3], 6.5);
    }

    #[test]
    fn f16_bf16_f32() {
        let b: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| h(*x)).collect();
        assert_eq!(dequantize(GgmlType::F16, &b, 2).unwrap(), vec![1.5, -2.0]);
        let b: Vec<u8> = [0.25f32]
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::BF16, &b, 1).unwrap(), vec![0.25]);
        let b = 3.0f32.to_le_bytes();
        assert_eq!(dequantize(GgmlType::F32, &b, 1).unwrap(), vec![3.0]);
    }

    // ---- whole-file round trip -----------------------------------------------------------

    #[test]
    fn write_then_read_back() {
        let f32_data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        let f16_data = [1.0f32, -0.5, 2.0, 0.125];
        let kv = vec![
            ("general.architecture", GgufValue::String("llama".into())),
            ("general.alignment", GgufValue::U32(64)),
            ("test.u8", GgufValue::U8(7)),
            ("test.i16", GgufValue::I16(-3)),
            ("test.f64", GgufValue::F64(2.5)),
            ("test.bool", GgufValue::Bool(true)),
            ("test.i64", GgufValue::I64(-9)),
            (
                "test.strings",
                GgufValue::Array(vec![
                    GgufValue::String("a".into()),
                    GgufValue::String("bc".into()),
                ]),
            ),
            (
                "test.ints",
                GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(-4)]),
            ),
        ];
        let tensors = vec![
            (
                "a.weight",
                vec![3, 2], // GGUF [in = 3, out = 2] -> HF [2, 3]
                GgmlType::F32,
                f32_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            (
                "b.weight",
                vec![4],
                GgmlType::F16,
                f16_data.iter().flat_map(|x| h(*x)).collect(),
            ),
        ];
        let bytes = write_gguf(&kv, &tensors, 64);
        let dir = std::env::temp_dir().join(format!("rlhf-gguf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tiny.gguf");
        std::fs::write(&path, &bytes).unwrap();

        for f in [
            GgufFile::open(&path).unwrap(),
            GgufFile::from_bytes("mem.gguf", bytes.clone()).unwrap(),
        ] {
            assert_eq!(f.version(), 3);
            assert_eq!(f.alignment(), 64);
            assert_eq!(f.data_offset() % 64, 0);
            assert_eq!(f.require_str("general.architecture").unwrap(), "llama");
            assert_eq!(f.get("test.u8"), Some(&GgufValue::U8(7)));
            assert_eq!(f.get("test.i16").and_then(GgufValue::as_i64), Some(-3));
            assert_eq!(f.get_f64("test.f64").unwrap(), Some(2.5));
            assert_eq!(f.get_bool("test.bool").unwrap(), Some(true));
            assert_eq!(f.get("test.i64"), Some(&GgufValue::I64(-9)));
            assert_eq!(
                f.get_string_array("test.strings").unwrap().unwrap(),
                vec!["a".to_string(), "bc".into()]
            );
            assert_eq!(f.get_i32_array("test.ints").unwrap().unwrap(), vec![1, -4]);
            assert!(f.get_u64("test.strings").is_err());
            assert!(matches!(
                f.require_u64("nope"),
                Err(GgufError::MissingKey { .. })
            ));

            let (shape, data) = f.tensor_f32("a.weight").unwrap();
            assert_eq!(shape, vec![2, 3]);
            assert_eq!(data, f32_data);
            let (shape, data) = f.tensor_f32("b.weight").unwrap();
            assert_eq!(shape, vec![4]);
            assert_eq!(data, f16_data.to_vec());
            assert!(matches!(
                f.tensor_f32("c.weight"),
                Err(GgufError::MissingTensor { .. })
            ));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn default_alignment_and_errors() {
        let tensors = vec![("x", vec![1], GgmlType::F32, 1.0f32.to_le_bytes().to_vec())];
        let bytes = write_gguf(&[], &tensors, 32);
        let f = GgufFile::from_bytes("x.gguf", bytes.clone()).unwrap();
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.tensor_f32("x").unwrap().1, vec![1.0]);

        // Truncated file.
        let err = GgufFile::from_bytes("t.gguf", bytes[..bytes.len() - 2].to_vec()).unwrap_err();
        assert!(matches!(err, GgufError::TensorOutOfBounds { .. }), "{err}");
        let err = GgufFile::from_bytes("t.gguf", bytes[..20].to_vec()).unwrap_err();
        assert!(matches!(err, GgufError::Truncated { .. }), "{err}");
        // Bad magic.
        let err = GgufFile::from_bytes("m.gguf", b"GGML\x03\0\0\0".to_vec()).unwrap_err();
        assert!(matches!(err, GgufError::BadMagic { .. }), "{err}");
        // Unsupported type names the tensor and the type.
        let q5 = vec![("q", vec![32], GgmlType::Q5_0, vec![0u8; 22])];
        let f = GgufFile::from_bytes("q.gguf", write_gguf(&[], &q5, 32)).unwrap();
        let err = f.tensor_f32("q").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`q`") && msg.contains("Q5_0"), "{msg}");
        let odd = vec![("o", vec![4], GgmlType::Other(99), vec![])];
        let f = GgufFile::from_bytes("o.gguf", write_gguf(&[], &odd, 32)).unwrap();
        let msg = f.tensor_f32("o").unwrap_err().to_string();
        assert!(msg.contains("`o`") && msg.contains("type id 99"), "{msg}");
    }

    // ---- Q/K permutation -----------------------------------------------------------------

    /// llama.cpp's `permute`: `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2)
    /// .reshape(rows, cols)`, written out with index arithmetic.
    fn permute_llama_cpp(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
        let half = rows / n_head / 2;
        let mut out = vec![0f32; w.len()];
        // Output index (h, j, s) in the swapped (n_head, half, 2) view reads input (h, s, j).
        for hd in 0..n_head {
            for j in 0..half {
                for s in 0..2 {
                    let dst = (hd * half + j) * 2 + s;
                    let src = (hd * 2 + s) * half + j;
                    out[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&w[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn qk_permutation_round_trip() {
        let (rows, cols, n_head) = (12, 5, 3); // head_dim 4
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let p = permute_llama_cpp(&w, rows, cols, n_head);
        assert_ne!(p, w);
        // Head 0 rows [0, 1, 2, 3] become [0, 2, 1, 3] (pairs interleaved).
        let row = |m: &[f32], r: usize| m[r * cols];
        assert_eq!(
            (0..4).map(|r| row(&p, r)).collect::<Vec<_>>(),
            vec![0.0, 10.0, 5.0, 15.0]
        );
        assert_eq!(unpermute_qk_rows(&p, rows, cols, n_head), w);
        // Larger head_dim, bias-like (cols = 1).
        let w: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let p = permute_llama_cpp(&w, 16, 1, 2);
        assert_eq!(unpermute_qk_rows(&p, 16, 1, 2), w);
    }

    /// A tiny llama GGUF image: vocab 4, hidden 4, 2 heads (head_dim 2), 1 kv head, ffn 2, one
    /// layer, tied; `up` is the GGUF dims of `blk.0.ffn_up.weight` (`[4, 2]` is right). Returns
    /// the image and the unpermuted Q and K.
    fn tiny_llama_image(up: Vec<u64>) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
        let f32b = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let q: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let k: Vec<f32> = (0..8).map(|i| 100.0 + i as f32).collect();
        let q_perm = permute_llama_cpp(&q, 4, 4, 2);
        let k_perm = permute_llama_cpp(&k, 2, 4, 1);
        let kv = vec![
            ("general.architecture", GgufValue::String("llama".into())),
            ("llama.block_count", GgufValue::U32(1)),
            ("llama.embedding_length", GgufValue::U32(4)),
            ("llama.feed_forward_length", GgufValue::U32(2)),
            ("llama.attention.head_count", GgufValue::U32(2)),
            ("llama.attention.head_count_kv", GgufValue::U32(1)),
            (
                "llama.attention.layer_norm_rms_epsilon",
                GgufValue::F32(1e-5),
            ),
            ("llama.rope.freq_base", GgufValue::F32(100000.0)),
            ("llama.context_length", GgufValue::U32(64)),
            ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
            ("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
        ];
        let z = |n: usize| f32b(&vec![0.5; n]);
        let tensors = vec![
            ("token_embd.weight", vec![4, 4], GgmlType::F32, z(16)),
            (
                "blk.0.attn_q.weight",
                vec![4, 4],
                GgmlType::F32,
                f32b(&q_perm),
            ),
            (
                "blk.0.attn_k.weight",
                vec![4, 2],
                GgmlType::F32,
                f32b(&k_perm),
            ),
            ("blk.0.attn_v.weight", vec![4, 2], GgmlType::F32, z(8)),
            ("blk.0.attn_output.weight", vec![4, 4], GgmlType::F32, z(16)),
            ("blk.0.ffn_gate.weight", vec![4, 2], GgmlType::F32, z(8)),
            (
                "blk.0.ffn_up.weight",
                up.clone(),
                GgmlType::F32,
                z(up.iter().product::<u64>() as usize),
            ),
            ("blk.0.ffn_down.weight", vec![2, 4], GgmlType::F32, z(8)),
            ("blk.0.attn_norm.weight", vec![4], GgmlType::F32, z(4)),
            ("blk.0.ffn_norm.weight", vec![4], GgmlType::F32, z(4)),
            ("output_norm.weight", vec![4], GgmlType::F32, z(4)),
        ];
        (write_gguf(&kv, &tensors, 32), q, k)
    }

    #[test]
    fn a_gguf_shape_error_names_the_gguf_tensor() {
        let (img, _, _) = tiny_llama_image(vec![4, 3]);
        let dir = std::env::temp_dir().join(format!("rlhf-gguf-shape-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.gguf");
        std::fs::write(&path, img).unwrap();
        let e = crate::Checkpoint::open(&path)
            .unwrap()
            .causal_lm(&rlhf_backend::test_device())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "`blk.0.ffn_up.weight` (HF `model.layers.0.mlp.up_proj.weight`) has shape [3, 4]"
            ),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn llama_to_hf_tiny() {
        let (img, q, k) = tiny_llama_image(vec![4, 2]);
        let f = GgufFile::from_bytes("tiny.gguf", img).unwrap();
        let (cfg, ts) = llama_to_hf(&f).unwrap();
        assert_eq!(cfg["model_type"], "llama");
        assert_eq!(cfg["num_key_value_heads"], 1);
        assert_eq!(cfg["head_dim"], 2);
        assert_eq!(cfg["rms_norm_eps"], 1e-5);
        assert_eq!(cfg["rope_theta"], 100000.0);
        assert_eq!(cfg["tie_word_embeddings"], true);
        assert_eq!(cfg["vocab_size"], 4);
        assert_eq!(cfg["bos_token_id"], 1);
        assert!(cfg["pad_token_id"].is_null());
        let get = |n: &str| ts.iter().find(|t| t.0 == n).unwrap();
        assert_eq!(get("model.layers.0.self_attn.q_proj.weight").2, q);
        let kt = get("model.layers.0.self_attn.k_proj.weight");
        assert_eq!((kt.1.clone(), kt.2.clone()), (vec![2, 4], k));
        assert_eq!(get("model.layers.0.mlp.down_proj.weight").1, vec![4, 2]);
        assert!(ts.iter().all(|t| t.0 != "lm_head.weight"));
        assert_eq!(ts.len(), 11);
    }
}
