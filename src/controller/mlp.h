// A small multilayer perceptron (input -> H1 -> ... -> out, ReLU between layers, linear output) and its
// training: softmax cross-entropy or mean squared error, Adam, mini-batches, early stopping on a
// validation set. Written by hand: the controller has a few thousand parameters, and no Debian library
// (mlpack pulls Armadillo and ensmallen for that) is worth the dependency and its floating-point order.
// Everything is fp64 and deterministic: the seed drives a PRNG implemented here (splitmix64), so the
// same data and options give the same weights on every platform.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace kvd {

// splitmix64 (Steele, Lea, Flood 2014): tiny, fully specified, good enough for initialisation and
// shuffling. std::normal_distribution and std::shuffle are implementation-defined, so they are not used.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : s_(seed) {}
  uint64_t next();
  double uniform();            // [0, 1), 53 bits
  double normal();             // standard normal (Box-Muller, one value per call)
  uint64_t below(uint64_t n);  // uniform in [0, n), unbiased (rejection)

 private:
  uint64_t s_;
};

class Mlp {
 public:
  Mlp() = default;
  // sizes = {inputs, hidden..., outputs}; at least {in, out}. Parameters start at 0 (see init).
  explicit Mlp(std::vector<int> sizes);

  const std::vector<int>& sizes() const { return sizes_; }
  int inputs() const { return sizes_.front(); }
  int outputs() const { return sizes_.back(); }
  int layers() const { return static_cast<int>(sizes_.size()) - 1; }
  // Layer l's weights: sizes[l+1] rows (outputs) of sizes[l] columns (inputs), row-major; and biases.
  double* weight(int l) { return params_.data() + w_off_[static_cast<size_t>(l)]; }
  const double* weight(int l) const { return params_.data() + w_off_[static_cast<size_t>(l)]; }
  double* bias(int l) { return params_.data() + b_off_[static_cast<size_t>(l)]; }
  const double* bias(int l) const { return params_.data() + b_off_[static_cast<size_t>(l)]; }
  std::vector<double>& params() { return params_; }
  const std::vector<double>& params() const { return params_; }

  // He-normal weights (std sqrt(2 / fan_in)), zero biases.
  void init(uint64_t seed);

  // Buffers for one forward/backward pass, so that a forward allocates nothing.
  struct Workspace {
    std::vector<std::vector<double>> act;    // act[0] = input, act[l+1] = output of layer l
    std::vector<std::vector<double>> delta;  // gradient w.r.t. the pre-activation of layer l
  };
  Workspace workspace() const;
  // Returns the output (logits or regression values, outputs() doubles inside ws).
  const double* forward(const double* x, Workspace& ws) const;
  // After forward(x, ws): adds d(loss)/d(params) to grad given d(loss)/d(output) = dout.
  void backward(const double* dout, Workspace& ws, double* grad) const;

 private:
  std::vector<int> sizes_;
  std::vector<double> params_;
  std::vector<size_t> w_off_, b_off_;
};

enum class Loss { kCrossEntropy, kMse };

// Rows of inputs with either class labels (cross-entropy) or target vectors (MSE).
struct Dataset {
  int n_in = 0;
  int n_targets = 0;       // MSE: values per row
  std::vector<double> x;   // rows x n_in
  std::vector<int> label;  // cross-entropy: class per row
  std::vector<double> y;   // MSE: rows x n_targets
  size_t rows() const { return n_in ? x.size() / static_cast<size_t>(n_in) : 0; }
  const double* row(size_t i) const { return x.data() + i * static_cast<size_t>(n_in); }
};

// Loss of one output and d(loss)/d(output) into dout (may be null). Cross-entropy: -log softmax(out)[label];
// MSE: mean over the targets of (out - y)^2.
double example_loss(Loss loss, const double* out, int n_out, const Dataset& d, size_t row, double* dout);
// Mean loss over the n rows of d listed in rows; with grad, also adds the gradient of that mean.
double batch_loss(const Mlp& net, Loss loss, const Dataset& d, const size_t* rows, size_t n,
                  Mlp::Workspace& ws, double* grad);
double dataset_loss(const Mlp& net, Loss loss, const Dataset& d);

struct FitOptions {
  int epochs = 300;
  int batch = 64;
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // Adam (Kingma & Ba 2015)
  int patience = 30;  // stop after this many epochs without a lower validation loss
  uint64_t seed = 0;  // initialisation and shuffling
};

struct EpochRecord {
  int epoch = 0;          // 1-based
  double train_loss = 0;  // over the whole training set after the epoch
  double val_loss = 0;
  std::vector<double> extra;  // what FitOptions' caller computes per epoch (e.g. accuracies)
};

struct FitResult {
  int best_epoch = 0;  // the weights kept are those after this epoch
  double best_val_loss = 0;
  int epochs_run = 0;
  std::vector<EpochRecord> curve;
};

// Initialises net (init(seed)) and trains it; keeps the weights of the epoch with the lowest
// validation loss. epoch_metrics (optional) fills EpochRecord::extra after each epoch.
FitResult fit(Mlp& net, Loss loss, const Dataset& train, const Dataset& val, const FitOptions& o,
              const std::function<std::vector<double>(const Mlp&)>& epoch_metrics = nullptr);

}  // namespace kvd
