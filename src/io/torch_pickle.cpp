#include "src/io/torch_pickle.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <variant>
#include <vector>

#include "src/common/error.h"
#include "src/common/text.h"
#include "src/io/atomic_file.h"

namespace ditlab {
namespace {

// ---- The zip container: PyTorch stores every entry uncompressed ("stored").

struct ZipEntry {
  uint64_t offset = 0, size = 0;
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
    size_t at = dir_offset;
    for (uint64_t e = 0; e < entries; ++e) {
      if (at + 46 > n || u32(at) != 0x02014b50) fail("corrupt zip central directory");
      uint16_t method = u16(at + 10);
      uint64_t size = u32(at + 20);
      size_t name_len = u16(at + 28), extra_len = u16(at + 30), comment_len = u16(at + 32);
      uint64_t local = u32(at + 42);
      std::string name = bytes_.substr(at + 46, name_len);
      if (method != 0) fail("entry '" + name + "' is compressed; torch.save writes stored entries");
      if (local + 30 > n || u32(local) != 0x04034b50) fail("corrupt local header of '" + name + "'");
      uint64_t data = local + 30 + u16(local + 26) + u16(local + 28);
      if (data + size > n) fail("entry '" + name + "' runs past the end of the file (truncated)");
      entries_[name] = {data, size};
      at += 46 + name_len + extra_len + comment_len;
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
  const char* data(const ZipEntry& e) const { return bytes_.data() + e.offset; }
  [[noreturn]] void fail(const std::string& what) const { throw IoError(path_ + ": " + what); }

 private:
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
struct PyObject {
  enum Kind { kNone, kBool, kInt, kFloat, kStr, kBytes, kTuple, kList, kDict, kGlobal, kTensor, kOpaque };
  Kind kind = kNone;
  int64_t i = 0;
  double f = 0;
  std::string s;                          // str, bytes, or "module.name" of a global / opaque
  std::vector<Py> items;                  // tuple, list
  std::vector<std::pair<Py, Py>> dict;    // dict (insertion order)
  at::Tensor tensor;
};

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
          stack_.push_back(t);
          break;
        }
        case 0x85: case 0x86: case 0x87: {                      // TUPLE1..3
          auto t = make(PyObject::kTuple);
          t->items.resize(op - 0x84);
          for (size_t k = t->items.size(); k-- > 0;) t->items[k] = pop();
          stack_.push_back(t);
          break;
        }
        case 'a': {                                             // APPEND
          auto v = pop();
          top()->items.push_back(v);
          break;
        }
        case 'e': {                                             // APPENDS
          auto values = pop_to_mark();
          auto& list = top()->items;
          list.insert(list.end(), values.begin(), values.end());
          break;
        }
        case 's': {                                             // SETITEM
          auto v = pop(), k = pop();
          top()->dict.emplace_back(k, v);
          break;
        }
        case 'u': {                                             // SETITEMS
          auto values = pop_to_mark();
          for (size_t k = 0; k + 1 < values.size(); k += 2) top()->dict.emplace_back(values[k], values[k + 1]);
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
    std::vector<Py> values(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return values;
  }
  Py memo(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) zip_.fail("malformed pickle (unknown memo " + std::to_string(index) + ")");
    return it->second;
  }

  int64_t as_int(const Py& p) {
    if (p->kind != PyObject::kInt) zip_.fail("malformed tensor record (expected an int)");
    return p->i;
  }
  std::vector<int64_t> as_ints(const Py& p) {
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
      auto t = make(PyObject::kTensor);
      t->tensor = a[0]->tensor.as_strided(as_ints(a[2]), as_ints(a[3]), as_int(a[1])).clone();
      return t;
    }
    if (name == "torch._utils._rebuild_parameter") return args->items.at(0);  // (data, requires_grad, hooks)
    auto o = make(PyObject::kOpaque);  // anything else (argparse.Namespace, ...) is kept opaque
    o->s = name;
    return o;
  }

  Py load_storage(const Py& pid) {
    // ('storage', storage type, key, location, numel)
    const auto& a = pid->items;
    if (a.size() < 5 || a[0]->s != "storage") zip_.fail("unsupported persistent id in data.pkl");
    const std::string key = a[2]->s;
    auto it = storages_.find(key);
    if (it == storages_.end()) {
      const auto dtype = storage_dtype(a[1]->s, zip_);
      const int64_t numel = as_int(a[4]);
      const ZipEntry& e = zip_.entry(prefix_ + "data/" + key);
      const uint64_t bytes = static_cast<uint64_t>(numel) * c10::elementSize(dtype);
      if (e.size != bytes) {
        zip_.fail("storage '" + key + "' holds " + std::to_string(e.size) + " bytes, expected " +
                  std::to_string(bytes));
      }
      auto storage = at::empty({numel}, at::TensorOptions().dtype(dtype));
      if (bytes) std::memcpy(storage.data_ptr(), zip_.data(e), bytes);
      it = storages_.emplace(key, storage).first;
    }
    auto t = make(PyObject::kTensor);
    t->tensor = it->second;
    return t;
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
  Py root = Unpickler(zip, prefix).load(zip.data(e), e.size);
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
