// TensorRT backend: model.<sm>.<precision>.plan (a serialized TensorRT engine built from the
// ONNX artifact) run with the TensorRT runtime (libnvinfer, or the lean runtime
// libnvinfer_lean when KILN_TENSORRT_LEAN) on the first CUDA device.
//
// Order at open: a usable CUDA device first (TensorRT is never touched without one: creating
// a runtime there logs CUDA error 35 and can crash the process), then the manifest's TensorRT
// version and compute capability against this runtime and GPU, then deserialisation.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <optional>

#include "../backend.h"
#include "../util.h"
#include "tensorrt_checks.h"

namespace kiln::detail {
namespace {

namespace nv = nvinfer1;

#ifdef KILN_TENSORRT_LEAN
constexpr bool kLeanRuntime = true;
#else
constexpr bool kLeanRuntime = false;
#endif

// At most this many execution contexts per engine (see TensorRtBackend: concurrency).
constexpr size_t kMaxContexts = 4;

std::string cuda_error(cudaError_t rc) {
  return "CUDA error " + std::to_string(static_cast<int>(rc)) + " (" + cudaGetErrorName(rc) + ": " +
         cudaGetErrorString(rc) + ")";
}

struct Device {
  int index = 0;
  std::string name, cc;  // "NVIDIA H100 80GB HBM3", "9.0"
  std::string unusable;  // empty when usable
};

// Probed once: cudaGetDeviceCount is the only CUDA call made before we know a device exists.
// Any CUDA error counts as "no GPU" (this CUDA runtime without a driver returns 35).
const Device& device() {
  static const Device d = [] {
    Device d;
    int count = 0;
    cudaError_t rc = cudaGetDeviceCount(&count);
    if (rc != cudaSuccess) {
      cudaGetLastError();  // do not leave the error for the next CUDA call of this thread
      std::string what = "no usable CUDA device: cudaGetDeviceCount failed with " + cuda_error(rc);
      if (rc == cudaErrorInsufficientDriver || rc == cudaErrorNoDevice) {
        what += ". The NVIDIA driver is missing or older than this CUDA runtime (" +
                std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10) +
                "): run on a machine with an NVIDIA GPU and a recent driver, or use a CPU backend (aoti, "
                "torchscript)";
      } else {
        what += ". Check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or use a CPU backend";
      }
      d.unusable = what;
      return d;
    }
    if (count <= 0) {
      d.unusable = "no CUDA device found (cudaGetDeviceCount returned 0; check CUDA_VISIBLE_DEVICES), or use a CPU "
                   "backend (aoti, torchscript)";
      return d;
    }
    cudaDeviceProp prop{};
    rc = cudaGetDeviceProperties(&prop, d.index);
    if (rc != cudaSuccess) {
      cudaGetLastError();
      d.unusable = "CUDA device 0 cannot be queried: cudaGetDeviceProperties failed with " + cuda_error(rc);
      return d;
    }
    d.name = prop.name;
    d.cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
    return d;
  }();
  return d;
}

// Routes TensorRT's errors into the kiln::Error of the call that caused them. TensorRT logs
// on the calling thread, so errors are kept per thread: a call clears them (take()) before
// and collects them after. Warnings go to stderr; info and verbose are dropped.
class Logger final : public nv::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    try {
      if (severity <= Severity::kERROR) {
        errors().push_back(msg);
      } else if (severity == Severity::kWARNING) {
        std::fprintf(stderr, "kiln tensorrt warning: %s\n", msg);
      }
    } catch (...) {  // log() must not throw
    }
  }
  // The errors logged on this thread since the last take(), as "; TensorRT: ..." or "".
  static std::string take() {
    auto& e = errors();
    std::string out = e.empty() ? std::string() : "; TensorRT: " + join(e, " | ");
    e.clear();
    return out;
  }

 private:
  static std::vector<std::string>& errors() {
    thread_local std::vector<std::string> e;
    return e;
  }
};

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  // At least `n` bytes (never 0: TensorRT wants an address for empty tensors too).
  cudaError_t reserve(size_t n) {
    n = std::max<size_t>(n, 256);
    if (n <= bytes) return cudaSuccess;
    if (ptr) cudaFree(ptr);
    ptr = nullptr, bytes = 0;
    cudaError_t rc = cudaMalloc(&ptr, n);
    if (rc == cudaSuccess) bytes = n;
    return rc;
  }
};

struct Stream {
  cudaStream_t s = nullptr;
  Stream() = default;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() {
    if (s) cudaStreamDestroy(s);
  }
};

// One caller's execution state: a context (its activation memory), a stream, the device
// buffers of the inputs and outputs (grown as needed, reused across calls).
struct Slot {
  std::unique_ptr<nv::IExecutionContext> context;
  Stream stream;
  std::map<std::string, DeviceBuffer> buffers;
  int profile = -1;
};

std::optional<nv::DataType> trt_dtype(DType d) {
  switch (d) {
    case DType::Float32: return nv::DataType::kFLOAT;
    case DType::Float16: return nv::DataType::kHALF;
    case DType::BFloat16: return nv::DataType::kBF16;
    case DType::Int64: return nv::DataType::kINT64;
    case DType::Int32: return nv::DataType::kINT32;
    case DType::Bool: return nv::DataType::kBOOL;
    case DType::UInt8: return nv::DataType::kUINT8;
  }
  return std::nullopt;
}

std::vector<char> read_file(const std::string& path, const std::string& engine) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw Error(ErrorCode::Artifact, "engine '" + engine + "': cannot open " + path);
  std::vector<char> bytes(static_cast<size_t>(f.tellg()));
  f.seekg(0);
  if (!f.read(bytes.data(), static_cast<std::streamsize>(bytes.size()))) {
    throw Error(ErrorCode::Artifact, "engine '" + engine + "': cannot read " + path);
  }
  return bytes;
}

// Concurrency: an IExecutionContext is not safe to use from two threads at once, but
// several contexts of one engine run concurrently (each has its own activation memory; the
// weights are the engine's). So run() leases a Slot from a small pool: slots are created on
// demand up to kMaxContexts, so a single-threaded user pays for one context's memory, and
// callers beyond that wait for a free slot rather than failing. A single mutex around run()
// would be simpler but would serialise the host<->device copies and the enqueue of every
// caller behind one stream.
class TensorRtBackend final : public Backend {
 public:
  explicit TensorRtBackend(const BackendLoad& load)
      : engine_name_(load.engine_name), inputs_(load.manifest.inputs), outputs_(load.manifest.outputs) {
    // The manifest entry is read first: a bad manifest is a Manifest error wherever it is opened.
    plan_ = trt::parse_plan_info(load.manifest, load.artifact, engine_name_);
    const Device& dev = device();
    if (!dev.unusable.empty()) {
      throw Error(ErrorCode::Device, "engine '" + engine_name_ + "': backend 'tensorrt': " + dev.unusable);
    }
    trt::check_compatible(plan_, trt::version_string(getInferLibVersion()), dev.cc, dev.name, engine_name_,
                          kLeanRuntime);
    check_cuda(cudaSetDevice(dev.index), "cudaSetDevice", ErrorCode::Device);

    std::vector<char> blob = read_file(load.artifact_path, engine_name_);
    Logger::take();
    runtime_.reset(nv::createInferRuntime(logger_));
    if (!runtime_) {
      throw Error(ErrorCode::Version, "engine '" + engine_name_ + "': the TensorRT runtime " +
                                          trt::version_string(getInferLibVersion()) +
                                          " could not be created for headers " +
                                          trt::version_string(NV_TENSORRT_VERSION) + Logger::take() +
                                          "; build kiln against the TensorRT it runs with");
    }
    // A version-compatible plan may carry the lean runtime as host code; the manifest says
    // the plan was built that way, and the sha256 check at open says it is that plan.
    if (plan_.version_compatible) runtime_->setEngineHostCodeAllowed(true);
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_) {
      throw Error(ErrorCode::Artifact, "engine '" + engine_name_ + "': TensorRT could not deserialise " +
                                           load.artifact_path + " (" + std::to_string(blob.size()) +
                                           " bytes): the plan is truncated, corrupt or was built by another "
                                           "TensorRT" + Logger::take() + "; rebuild the plan on this machine");
    }
    check_bindings();
    // One slot up front, so a plan whose context cannot be created fails at open, not at run.
    free_.push_back(make_slot());
    created_ = 1;
  }

  std::vector<Tensor> run(const std::vector<Tensor>& inputs) const override {
    std::map<std::string, std::vector<int64_t>> shapes;
    for (size_t i = 0; i < inputs_.size(); ++i) shapes[inputs_[i].name] = inputs[i].shape();
    const int profile = static_cast<int>(trt::choose_profile(plan_, shapes, engine_name_));

    std::unique_ptr<Slot> slot = acquire();
    bool healthy = false;
    struct Release {  // gives the slot back, or drops it after a failure mid-run
      const TensorRtBackend& self;
      std::unique_ptr<Slot>& slot;
      bool& healthy;
      ~Release() { self.release(std::move(slot), healthy); }
    } release{*this, slot, healthy};

    Logger::take();
    check_cuda(cudaSetDevice(device().index), "cudaSetDevice", ErrorCode::Device);
    nv::IExecutionContext& ctx = *slot->context;
    cudaStream_t stream = slot->stream.s;
    if (slot->profile != profile) {
      if (!ctx.setOptimizationProfileAsync(profile, stream)) fail_run("setOptimizationProfileAsync(" + std::to_string(profile) + ")");
      slot->profile = profile;
    }
    for (size_t i = 0; i < inputs_.size(); ++i) {
      const std::string& name = inputs_[i].name;
      const Tensor& t = inputs[i];
      if (t.ndim() > static_cast<size_t>(nv::Dims::MAX_DIMS)) fail_run("rank " + std::to_string(t.ndim()) + " input '" + name + "'");
      nv::Dims dims{};
      dims.nbDims = static_cast<int32_t>(t.ndim());
      for (size_t d = 0; d < t.ndim(); ++d) dims.d[d] = t.shape()[d];
      if (!ctx.setInputShape(name.c_str(), dims)) fail_run("setInputShape('" + name + "', " + shape_to_string(t.shape()) + ")");
      DeviceBuffer& buf = slot->buffers[name];
      check_cuda(buf.reserve(t.nbytes()), "cudaMalloc for input '" + name + "'");
      if (t.nbytes()) {
        check_cuda(cudaMemcpyAsync(buf.ptr, t.data(), t.nbytes(), cudaMemcpyHostToDevice, stream),
                   "copying input '" + name + "' to the GPU");
      }
      if (!ctx.setTensorAddress(name.c_str(), buf.ptr)) fail_run("setTensorAddress('" + name + "')");
    }
    std::vector<Tensor> out;
    for (const auto& spec : outputs_) {
      nv::Dims dims = ctx.getTensorShape(spec.name.c_str());
      std::vector<int64_t> shape;
      for (int32_t d = 0; d < dims.nbDims; ++d) {
        if (dims.d[d] < 0) {
          throw Error(ErrorCode::Runtime, "engine '" + engine_name_ + "': output '" + spec.name +
                                              "' has a data-dependent shape, which the tensorrt backend does not "
                                              "support" + Logger::take());
        }
        shape.push_back(dims.d[d]);
      }
      Tensor t = Tensor::zeros(spec.dtype, shape);
      DeviceBuffer& buf = slot->buffers[spec.name];
      check_cuda(buf.reserve(t.nbytes()), "cudaMalloc for output '" + spec.name + "'");
      if (!ctx.setTensorAddress(spec.name.c_str(), buf.ptr)) fail_run("setTensorAddress('" + spec.name + "')");
      out.push_back(std::move(t));
    }
    if (!ctx.enqueueV3(stream)) fail_run("enqueueV3");
    for (size_t k = 0; k < outputs_.size(); ++k) {
      if (!out[k].nbytes()) continue;
      check_cuda(cudaMemcpyAsync(out[k].data(), slot->buffers[outputs_[k].name].ptr, out[k].nbytes(),
                                 cudaMemcpyDeviceToHost, stream),
                 "copying output '" + outputs_[k].name + "' from the GPU");
    }
    check_cuda(cudaStreamSynchronize(stream), "running the plan (cudaStreamSynchronize)");
    healthy = true;
    return out;
  }

 private:
  // The plan and the manifest are written together; check they agree before any run.
  void check_bindings() const {
    std::map<std::string, nv::TensorIOMode> io;
    for (int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
      const char* n = engine_->getIOTensorName(i);
      io[n] = engine_->getTensorIOMode(n);
    }
    auto check = [&](const TensorSpec& s, nv::TensorIOMode mode, const char* kind) {
      auto it = io.find(s.name);
      std::string bad;
      if (it == io.end() || it->second != mode) {
        bad = "has no " + std::string(kind) + " '" + s.name + "'";
      } else if (trt_dtype(s.dtype) != engine_->getTensorDataType(s.name.c_str())) {
        bad = "has " + std::string(kind) + " '" + s.name + "' with another dtype than " + dtype_name(s.dtype);
      } else if (engine_->getTensorLocation(s.name.c_str()) != nv::TensorLocation::kDEVICE) {
        bad = "keeps " + std::string(kind) + " '" + s.name + "' in host memory (a shape tensor), which kiln does not bind";
      }
      if (!bad.empty()) {
        throw Error(ErrorCode::Artifact, "engine '" + engine_name_ + "': the plan " + plan_.file + " " + bad +
                                             " that manifest.json lists; the plan and the manifest disagree, "
                                             "rebuild the engine");
      }
    };
    for (const auto& s : inputs_) check(s, nv::TensorIOMode::kINPUT, "input");
    for (const auto& s : outputs_) check(s, nv::TensorIOMode::kOUTPUT, "output");
    if (static_cast<size_t>(engine_->getNbOptimizationProfiles()) != plan_.profiles.size()) {
      throw Error(ErrorCode::Artifact, "engine '" + engine_name_ + "': the plan " + plan_.file + " has " +
                                           std::to_string(engine_->getNbOptimizationProfiles()) +
                                           " optimisation profiles, manifest.json lists " +
                                           std::to_string(plan_.profiles.size()) + "; rebuild the engine");
    }
  }

  std::unique_ptr<Slot> make_slot() const {
    auto slot = std::make_unique<Slot>();
    Logger::take();
    slot->context.reset(engine_->createExecutionContext());
    if (!slot->context) {
      throw Error(ErrorCode::Runtime, "engine '" + engine_name_ + "': TensorRT could not create an execution "
                                          "context (out of GPU memory?)" + Logger::take());
    }
    check_cuda(cudaStreamCreateWithFlags(&slot->stream.s, cudaStreamNonBlocking), "cudaStreamCreate");
    return slot;
  }

  std::unique_ptr<Slot> acquire() const {
    std::unique_lock<std::mutex> lock(mutex_);
    available_.wait(lock, [&] { return !free_.empty() || created_ < kMaxContexts; });
    if (!free_.empty()) {
      auto slot = std::move(free_.back());
      free_.pop_back();
      return slot;
    }
    ++created_;
    lock.unlock();
    try {
      return make_slot();
    } catch (...) {
      release(nullptr, false);
      throw;
    }
  }

  void release(std::unique_ptr<Slot> slot, bool healthy) const {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (slot && healthy) {
        free_.push_back(std::move(slot));
      } else {
        --created_;
      }
    }
    available_.notify_one();
  }

  void check_cuda(cudaError_t rc, const std::string& what, ErrorCode code = ErrorCode::Runtime) const {
    if (rc == cudaSuccess) return;
    cudaGetLastError();
    throw Error(code, "engine '" + engine_name_ + "': " + what + " failed with " + cuda_error(rc) + Logger::take());
  }

  [[noreturn]] void fail_run(const std::string& call) const {
    throw Error(ErrorCode::Runtime, "engine '" + engine_name_ + "': TensorRT " + call + " failed" + Logger::take());
  }

  std::string engine_name_;
  std::vector<TensorSpec> inputs_, outputs_;
  trt::PlanInfo plan_;
  // Declared in destruction order's reverse: slots (contexts) go before the engine, the
  // engine before the runtime, the runtime before the logger.
  Logger logger_;
  std::unique_ptr<nv::IRuntime> runtime_;
  std::unique_ptr<nv::ICudaEngine> engine_;
  mutable std::mutex mutex_;
  mutable std::condition_variable available_;
  mutable std::vector<std::unique_ptr<Slot>> free_;
  mutable size_t created_ = 0;
};

const BackendRegistrar registrar([] {
  BackendInfo info{"tensorrt", "tensorrt", /*priority=*/30, [] { return device().unusable; },
                   [](const BackendLoad& load) -> std::unique_ptr<Backend> {
                     return std::make_unique<TensorRtBackend>(load);
                   }};
  info.unusable_code = ErrorCode::Device;
  return info;
}());

}  // namespace
}  // namespace kiln::detail
