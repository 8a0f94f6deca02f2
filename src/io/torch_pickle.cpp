#include "src/io/torch_pickle.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "src/common/error.h"
#include "src/common/text.h"
#include "src/io/atomic_file.h"
#include "src/io/checksum.h"

namespace ditlab {
namespace {

// ---- The zip container: PyTorch stores every entry uncompressed ("stored").

struct ZipEntry {
  std::string name;
  uint64_t offset = 0, size = 0;
  uint32_t crc = 0;
};

class ZipArchive {
 public:
  ZipArchive(const std::string& path, std::string bytes) : path_(path), bytes_(std::move(bytes)) {
    // End of central directory: signature 0x06054b50 within the last 64 KiB + 22 bytes.
    const size_t n = bytes_.size();
    if (n < 22) fail("too short for a zip file");
    size_t eocd = std::string::npos;
    for (size_t i = n - 22 + 1; i-- > (n > 65557 ? n - 65557 : 0);) {
      if (u32(i) == 0x06054b50) {
        eocd = i;
        break;
      }
    }
    if (eocd == std::string::npos) fail("not a zip file (torch.save files from PyTorch >= 1.6 are zips)");
    uint64_t entries = u16(eocd + 10), dir_offset = u32(eocd + 16);
    if (entries == 0xffff || dir_offset == 0xffffffff) fail("zip64 archives (> 4 GiB) are not supported");
    uint64_t at = dir_offset;
    for (uint64_t e = 0; e < entries; ++e) {
      if (at + 46 > n || u32(at) != 0x02014b50) fail("corrupt zip central directory");
      const uint64_t record_size = 46 + u16(at + 28) + u16(at + 30) + u16(at + 32);
      if (at + record_size > n) fail("corrupt zip central directory");
      ZipEntry parsed = central_entry(at);
      entries_[parsed.name] = parsed;
      at += record_size;
    }
  }

  // The one entry whose name ends with `suffix` (torch.save prefixes every name with a folder).
  std::string find_suffix(const std::string& suffix) const {
    for (const auto& [name, e] : entries_) {
      if (ends_with(name, suffix)) {
        return name;
      }
    }
    fail("no '" + suffix + "' entry: not a torch.save file");
  }
  const ZipEntry& entry(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) fail("missing entry '" + name + "'");
    return it->second;
  }
  // The entry's bytes, once they match the central directory's CRC-32: a flipped bit in a
  // storage would otherwise load as a silently wrong weight. A CRC of 0 means "not computed"
  // (torch.serialization.set_crc32_options(False) writes zeros), so it is not checked.
  const char* verified_data(const ZipEntry& e) const {
    const char* p = bytes_.data() + e.offset;
    if (e.crc != 0 && crc32_of(p, e.size) != e.crc) {
      fail("entry '" + e.name + "' fails its CRC-32 check (the file is corrupt: copy it again)");
    }
    return p;
  }
  [[noreturn]] void fail(const std::string& what) const { throw IoError(path_ + ": " + what); }

 private:
  // One entry of the central directory, checked against its local header: a reader that
  // trusted only one of the two could be shown other bytes than zip tools and PyTorch see.
  ZipEntry central_entry(uint64_t at) const {
    ZipEntry e;
    e.name = bytes_.substr(at + 46, u16(at + 28));
    const uint16_t method = u16(at + 10);
    e.crc = u32(at + 16);
    e.size = u32(at + 20);
    const uint64_t uncompressed = u32(at + 24);
    const uint64_t local = u32(at + 42);
    if (method != 0) fail("entry '" + e.name + "' is compressed; torch.save writes stored entries");
    if (uncompressed != e.size) {
      fail("stored entry '" + e.name + "' claims " + std::to_string(uncompressed) +
           " bytes uncompressed but " + std::to_string(e.size) + " stored");
    }
    if (local + 30 > bytes_.size() || u32(local) != 0x04034b50) {
      fail("corrupt local header of '" + e.name + "'");
    }
    check_local_header(local, method, e.size, uncompressed, e.name);
    e.offset = local + 30 + u16(local + 26) + u16(local + 28);
    if (e.offset + e.size > bytes_.size()) {
      fail("entry '" + e.name + "' runs past the end of the file (truncated)");
    }
    return e;
  }
  void check_local_header(uint64_t local, uint16_t method, uint64_t size, uint64_t uncompressed,
                          const std::string& name) const {
    if (u16(local + 8) != method) {
      fail("the local header of '" + name +
           "' disagrees with the central directory on the compression method");
    }
    // General-purpose flag bit 3: the sizes follow the data in a descriptor and the local header
    // holds zeros; the central directory has the real ones then.
    const bool sizes_in_descriptor = (u16(local + 6) & 0x8) != 0;
    const uint64_t local_size = u32(local + 18), local_uncompressed = u32(local + 22);
    if (sizes_in_descriptor && local_size == 0 && local_uncompressed == 0) return;
    if (local_size != size || local_uncompressed != uncompressed) {
      fail("the local header of '" + name + "' gives " + std::to_string(local_size) +
           " bytes, the central directory " + std::to_string(size));
    }
  }
  uint32_t u32(size_t at) const {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(bytes_[at + i]);
    return v;
  }
  uint16_t u16(size_t at) const {
    return static_cast<uint16_t>(static_cast<uint8_t>(bytes_[at]) | (static_cast<uint8_t>(bytes_[at + 1]) << 8));
  }

  std::string path_;
  std::string bytes_;
  std::map<std::string, ZipEntry> entries_;
};

// ---- Python values, as far as state dicts need them.

struct PyObject;
using Py = std::shared_ptr<PyObject>;
// What an opaque object holds for an integer wider than 64 bits (LONG1 of more than 8 bytes).
const char* const kWideInt = "int wider than 64 bits";
struct PyObject {
  enum Kind { kNone, kBool, kInt, kFloat, kStr, kBytes, kTuple, kList, kDict, kGlobal, kTensor, kOpaque };
  Kind kind = kNone;
  int64_t i = 0;
  double f = 0;
  std::string s;                          // str, bytes, or "module.name" of a global / opaque
  std::vector<Py> items;                  // tuple, list
  std::vector<std::pair<Py, Py>> dict;    // dict (insertion order)
  at::Tensor tensor;
  int depth = 0;        // an upper bound on how deeply containers nest inside this one
  bool nested = false;  // placed inside some container already
};

// Containers nest at most this deep. Releasing a chain of shared_ptr recurses once per level,
// so a hostile data.pkl of a million nested one-element tuples would overflow the stack when
// freed. Checkpoints nest a handful of levels (checkpoint -> "opt" -> "state" -> 0 -> tensor).
constexpr int kMaxNesting = 1000;

Py make(PyObject::Kind kind) {
  auto p = std::make_shared<PyObject>();
  p->kind = kind;
  return p;
}

at::ScalarType storage_dtype(const std::string& global, const ZipArchive& zip) {
  static const std::map<std::string, at::ScalarType> types = {
      {"torch.FloatStorage", at::kFloat},   {"torch.DoubleStorage", at::kDouble},
      {"torch.HalfStorage", at::kHalf},     {"torch.BFloat16Storage", at::kBFloat16},
      {"torch.LongStorage", at::kLong},     {"torch.IntStorage", at::kInt},
      {"torch.ShortStorage", at::kShort},   {"torch.CharStorage", at::kChar},
      {"torch.ByteStorage", at::kByte},     {"torch.BoolStorage", at::kBool}};
  auto it = types.find(global);
  if (it == types.end()) zip.fail("unsupported storage type " + global);
  return it->second;
}

std::string join_ints(const std::vector<int64_t>& values) {
  std::string out;
  for (int64_t v : values) out += (out.empty() ? "" : ", ") + std::to_string(v);
  return "[" + out + "]";
}

// A tensor record's view must lie inside its storage. LibTorch's own check (1.13) computes
// offset * itemsize in int64 without overflow checks, so a hostile offset near 2^62 wraps
// around, passes, and reads outside the storage; hence this check, in arithmetic that cannot
// overflow, before as_strided.
void check_view_in_storage(const std::vector<int64_t>& sizes, const std::vector<int64_t>& strides,
                           int64_t offset, int64_t storage_numel, const ZipArchive& zip) {
  const std::string view = "a tensor (offset " + std::to_string(offset) + ", sizes " +
                           join_ints(sizes) + ", strides " + join_ints(strides) + ")";
  if (sizes.size() != strides.size()) zip.fail(view + " has unequal numbers of sizes and strides");
  if (offset < 0) zip.fail(view + " has a negative storage offset");
  bool empty = false;
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] < 0 || strides[d] < 0) zip.fail(view + " has a negative size or stride");
    empty = empty || sizes[d] == 0;
  }
  if (empty) return;  // reads nothing
  int64_t numel = 1;
  int64_t last = offset;  // the storage index of the view's last element
  for (size_t d = 0; d < sizes.size(); ++d) {
    int64_t step = 0;
    if (__builtin_mul_overflow(numel, sizes[d], &numel) ||
        __builtin_mul_overflow(sizes[d] - 1, strides[d], &step) ||
        __builtin_add_overflow(last, step, &last)) {
      zip.fail(view + " overflows 64-bit indexing");
    }
  }
  if (last >= storage_numel) {
    zip.fail(view + " reaches past its storage of " + std::to_string(storage_numel) + " elements");
  }
}

class Unpickler {
 public:
  Unpickler(const ZipArchive& zip, const std::string& prefix) : zip_(zip), prefix_(prefix) {}

  Py load(const char* data, size_t size) {
    data_ = data;
    size_ = size;
    pos_ = 0;
    while (true) {
      const uint8_t op = byte();
      switch (op) {
        case 0x80: byte(); break;                               // PROTO
        case 0x95: take(8); break;                              // FRAME
        case '.': return pop();                                 // STOP
        case '(': marks_.push_back(stack_.size()); break;       // MARK
        case '}': stack_.push_back(make(PyObject::kDict)); break;
        case ']': stack_.push_back(make(PyObject::kList)); break;
        case ')': stack_.push_back(make(PyObject::kTuple)); break;
        case 'N': stack_.push_back(make(PyObject::kNone)); break;
        case 0x88: case 0x89: {                                 // NEWTRUE, NEWFALSE
          auto b = make(PyObject::kBool);
          b->i = op == 0x88;
          stack_.push_back(b);
          break;
        }
        case 'K': push_int(byte()); break;                      // BININT1
        case 'M': push_int(le(2)); break;                       // BININT2
        case 'J': push_int(static_cast<int32_t>(le(4))); break; // BININT
        case 0x8a: {                                            // LONG1
          size_t n = byte();
          // Python writes the fewest bytes that hold the value, so more than 8 is an integer
          // beyond int64: harmless where nothing reads it (a stored seed of 2^63 + 5, say), an
          // error where a tensor needs it as a size, stride or offset (as_int), never truncated.
          if (n > 8) {
            take(n);
            auto wide = make(PyObject::kOpaque);
            wide->s = kWideInt;
            stack_.push_back(wide);
            break;
          }
          uint64_t v = le(n);
          if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);  // sign
          push_int(static_cast<int64_t>(v));
          break;
        }
        case 'G': {                                             // BINFLOAT, big-endian
          uint64_t bits = 0;
          for (int k = 0; k < 8; ++k) bits = (bits << 8) | byte();
          auto f = make(PyObject::kFloat);
          std::memcpy(&f->f, &bits, 8);
          stack_.push_back(f);
          break;
        }
        case 'X': push_str(PyObject::kStr, le(4)); break;       // BINUNICODE
        case 0x8c: push_str(PyObject::kStr, byte()); break;     // SHORT_BINUNICODE
        case 'T': push_str(PyObject::kBytes, le(4)); break;     // BINSTRING
        case 'U': push_str(PyObject::kBytes, byte()); break;    // SHORT_BINSTRING
        case 'B': push_str(PyObject::kBytes, le(4)); break;     // BINBYTES
        case 'C': push_str(PyObject::kBytes, byte()); break;    // SHORT_BINBYTES
        case 'c': {                                             // GLOBAL module\nname\n
          auto g = make(PyObject::kGlobal);
          std::string module = line();  // two statements: the order of reads matters
          g->s = module + "." + line();
          stack_.push_back(g);
          break;
        }
        case 'q': memo_[byte()] = top(); break;                 // BINPUT
        case 'r': memo_[le(4)] = top(); break;                  // LONG_BINPUT
        case 0x94: memo_[memo_.size()] = top(); break;          // MEMOIZE
        case 'h': stack_.push_back(memo(byte())); break;        // BINGET
        case 'j': stack_.push_back(memo(le(4))); break;         // LONG_BINGET
        case 't': {                                             // TUPLE
          auto t = make(PyObject::kTuple);
          t->items = pop_to_mark();
          nest(*t, t->items);
          stack_.push_back(t);
          break;
        }
        case 0x85: case 0x86: case 0x87: {                      // TUPLE1..3
          auto t = make(PyObject::kTuple);
          t->items.resize(op - 0x84);
          for (size_t k = t->items.size(); k-- > 0;) t->items[k] = pop();
          nest(*t, t->items);
          stack_.push_back(t);
          break;
        }
        case 'a': {                                             // APPEND
          auto v = pop();
          auto list = top();
          nest(*list, {v});
          list->items.push_back(v);
          break;
        }
        case 'e': {                                             // APPENDS
          auto values = pop_to_mark();
          auto list = top();
          nest(*list, values);
          list->items.insert(list->items.end(), values.begin(), values.end());
          break;
        }
        case 's': {                                             // SETITEM
          auto v = pop(), k = pop();
          auto dict = top();
          nest(*dict, {k, v});
          dict->dict.emplace_back(k, v);
          break;
        }
        case 'u': {                                             // SETITEMS
          auto values = pop_to_mark();
          if (values.size() % 2 != 0) zip_.fail("malformed pickle (SETITEMS: a key without a value)");
          auto dict = top();
          nest(*dict, values);
          for (size_t k = 0; k < values.size(); k += 2) {
            dict->dict.emplace_back(values[k], values[k + 1]);
          }
          break;
        }
        case 'R': {                                             // REDUCE
          auto args = pop(), callable = pop();
          stack_.push_back(reduce(callable, args));
          break;
        }
        case 0x81: {                                            // NEWOBJ
          auto args = pop(), cls = pop();
          auto o = make(PyObject::kOpaque);
          o->s = cls->s;
          stack_.push_back(o);
          break;
        }
        case 'b': pop(); break;                                 // BUILD: object state (unused)
        case 'Q': {                                             // BINPERSID
          auto pid = pop();
          stack_.push_back(load_storage(pid));
          break;
        }
        default: {
          char hex[8];
          std::snprintf(hex, sizeof(hex), "0x%02x", op);
          zip_.fail(std::string("unsupported pickle opcode ") + hex + " at byte " + std::to_string(pos_ - 1));
        }
      }
    }
  }

 private:
  uint8_t byte() {
    if (pos_ >= size_) zip_.fail("data.pkl ends early (truncated)");
    return static_cast<uint8_t>(data_[pos_++]);
  }
  const char* take(size_t n) {
    if (pos_ + n > size_) zip_.fail("data.pkl ends early (truncated)");
    pos_ += n;
    return data_ + pos_ - n;
  }
  uint64_t le(size_t n) {
    const char* p = take(n);
    uint64_t v = 0;
    for (size_t k = n; k-- > 0;) v = (v << 8) | static_cast<uint8_t>(p[k]);
    return v;
  }
  std::string line() {
    std::string s;
    for (char c; (c = static_cast<char>(byte())) != '\n';) s += c;
    return s;
  }
  void push_int(int64_t v) {
    auto p = make(PyObject::kInt);
    p->i = v;
    stack_.push_back(p);
  }
  void push_str(PyObject::Kind kind, size_t n) {
    auto p = make(kind);
    p->s.assign(take(n), n);
    stack_.push_back(p);
  }
  Py top() {
    if (stack_.empty()) zip_.fail("malformed pickle (empty stack)");
    return stack_.back();
  }
  Py pop() {
    Py v = top();
    stack_.pop_back();
    return v;
  }
  std::vector<Py> pop_to_mark() {
    if (marks_.empty()) zip_.fail("malformed pickle (no mark)");
    size_t mark = marks_.back();
    marks_.pop_back();
    // Other opcodes may pop past a mark; Python's unpickler refuses that, and so do we.
    if (mark > stack_.size()) zip_.fail("malformed pickle (the stack was popped below a mark)");
    std::vector<Py> values(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return values;
  }
  Py memo(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) zip_.fail("malformed pickle (unknown memo " + std::to_string(index) + ")");
    return it->second;
  }

  // Records that `added` now sit inside `container`, keeping every depth an upper bound. A
  // container that is already inside another may not grow deeper: its parents' depths would
  // go stale, and alternating the two steps would build an unbounded chain. Python's pickler
  // fills each container before placing it in its parent, so only recursive objects (which
  // state dicts never hold) are refused by that rule.
  void nest(PyObject& container, const std::vector<Py>& added) {
    int depth = container.depth;
    for (const auto& item : added) depth = std::max(depth, item->depth + 1);
    if (depth > kMaxNesting) {
      zip_.fail("data.pkl nests containers more than " + std::to_string(kMaxNesting) +
                " levels deep (not a checkpoint)");
    }
    if (depth > container.depth && container.nested) {
      zip_.fail("data.pkl deepens a container already placed inside another (recursive objects are "
                "not supported)");
    }
    container.depth = depth;
    for (const auto& item : added) item->nested = true;
  }

  int64_t as_int(const Py& p) {
    if (p->kind == PyObject::kOpaque && p->s == kWideInt) {
      zip_.fail("a tensor record holds an integer wider than 64 bits as a size, stride or offset");
    }
    if (p->kind != PyObject::kInt) zip_.fail("malformed tensor record (expected an int)");
    return p->i;
  }
  std::vector<int64_t> as_ints(const Py& p) {
    if (p->kind != PyObject::kTuple) zip_.fail("malformed tensor record (expected a tuple)");
    std::vector<int64_t> out;
    for (const auto& v : p->items) out.push_back(as_int(v));
    return out;
  }

  Py reduce(const Py& callable, const Py& args) {
    const std::string& name = callable->s;
    if (name == "collections.OrderedDict" || name == "builtins.dict") return make(PyObject::kDict);
    if (name == "torch._utils._rebuild_tensor_v2" || name == "torch._utils._rebuild_tensor") {
      // (storage, storage_offset, size, stride, ...)
      const auto& a = args->items;
      if (a.size() < 4 || a[0]->kind != PyObject::kTensor) zip_.fail("malformed tensor record");
      const auto sizes = as_ints(a[2]), strides = as_ints(a[3]);
      const int64_t offset = as_int(a[1]);
      check_view_in_storage(sizes, strides, offset, a[0]->tensor.numel(), zip_);
      auto t = make(PyObject::kTensor);
      try {
        t->tensor = a[0]->tensor.as_strided(sizes, strides, offset).clone();
      } catch (const c10::Error& e) {
        zip_.fail(std::string("cannot rebuild a tensor: ") + e.what_without_backtrace());
      }
      return t;
    }
    if (name == "torch._utils._rebuild_parameter") {  // (data, requires_grad, hooks)
      if (args->items.empty() || args->items[0]->kind != PyObject::kTensor) {
        zip_.fail("malformed parameter record (expected a tensor first)");
      }
      return args->items[0];
    }
    auto o = make(PyObject::kOpaque);  // anything else (argparse.Namespace, ...) is kept opaque
    o->s = name;
    return o;
  }

  Py load_storage(const Py& pid) {
    // ('storage', storage type, key, location, numel)
    const auto& a = pid->items;
    if (a.size() < 5 || a[0]->s != "storage" || a[2]->kind != PyObject::kStr) {
      zip_.fail("unsupported persistent id in data.pkl");
    }
    const std::string key = a[2]->s;
    auto it = storages_.find(key);
    if (it == storages_.end()) {
      const auto dtype = storage_dtype(a[1]->s, zip_);
      const int64_t numel = as_int(a[4]);
      const ZipEntry& e = zip_.entry(prefix_ + "data/" + key);
      const uint64_t bytes = storage_bytes(key, numel, c10::elementSize(dtype));
      if (e.size != bytes) {
        zip_.fail("storage '" + key + "' holds " + std::to_string(e.size) + " bytes, expected " +
                  std::to_string(bytes));
      }
      auto storage = at::empty({numel}, at::TensorOptions().dtype(dtype));
      if (bytes) std::memcpy(storage.data_ptr(), zip_.verified_data(e), bytes);
      it = storages_.emplace(key, storage).first;
    }
    auto t = make(PyObject::kTensor);
    t->tensor = it->second;
    return t;
  }

  // The byte size of a storage of `numel` elements; the count comes from the file, so a negative
  // or overflowing one is refused rather than wrapped around.
  uint64_t storage_bytes(const std::string& key, int64_t numel, size_t element_size) {
    uint64_t bytes = 0;
    if (numel < 0 || __builtin_mul_overflow(static_cast<uint64_t>(numel), element_size, &bytes)) {
      zip_.fail("storage '" + key + "' has an impossible element count " + std::to_string(numel));
    }
    return bytes;
  }

  const ZipArchive& zip_;
  std::string prefix_;
  const char* data_ = nullptr;
  size_t size_ = 0, pos_ = 0;
  std::vector<Py> stack_;
  std::vector<size_t> marks_;
  std::map<uint64_t, Py> memo_;
  std::map<std::string, at::Tensor> storages_;
};

const Py* dict_get(const Py& dict, const std::string& key) {
  for (const auto& [k, v] : dict->dict) {
    if (k->kind == PyObject::kStr && k->s == key) return &v;
  }
  return nullptr;
}

}  // namespace

std::map<std::string, at::Tensor> read_torch_state_dict(const std::string& path,
                                                        const std::string& key) {
  ZipArchive zip(path, read_file(path));
  const std::string pkl = zip.find_suffix("data.pkl");
  const std::string prefix = pkl.substr(0, pkl.size() - std::string("data.pkl").size());
  const ZipEntry& e = zip.entry(pkl);
  Py root = Unpickler(zip, prefix).load(zip.verified_data(e), e.size);
  if (root->kind != PyObject::kDict) zip.fail("the saved object is not a dict");

  Py state = root;
  const bool nested = std::any_of(root->dict.begin(), root->dict.end(),
                                  [](const auto& kv) { return kv.second->kind == PyObject::kDict; });
  if (!key.empty() || nested) {
    std::string chosen = key;
    if (chosen.empty()) chosen = dict_get(root, "ema") ? "ema" : "model";
    const Py* found = dict_get(root, chosen);
    if (!found || (*found)->kind != PyObject::kDict) {
      std::string keys;
      for (const auto& [k, v] : root->dict) keys += " " + k->s;
      zip.fail("no state dict under '" + chosen + "' (top-level keys:" + keys + ")");
    }
    state = *found;
  }
  std::map<std::string, at::Tensor> tensors;
  for (const auto& [k, v] : state->dict) {
    if (k->kind != PyObject::kStr || v->kind != PyObject::kTensor) {
      zip.fail("entry '" + k->s + "' of the state dict is not a tensor");
    }
    tensors[k->s] = v->tensor;
  }
  return tensors;
}

}  // namespace ditlab
