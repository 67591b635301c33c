// The controller's MLP: finite-difference gradient check for both losses, toy problems learned to 100%
// (linearly separable, XOR), determinism, and the PRNG.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "controller/mlp.h"
#include "util/error.h"

namespace kvd {
namespace {

Dataset random_dataset(Loss loss, int n_in, int n_out, int rows, uint64_t seed) {
  SplitMix64 rng(seed);
  Dataset d;
  d.n_in = n_in;
  d.n_targets = loss == Loss::kMse ? n_out : 0;
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < n_in; ++i) d.x.push_back(rng.normal());
    if (loss == Loss::kMse)
      for (int k = 0; k < n_out; ++k) d.y.push_back(rng.normal());
    else
      d.label.push_back(static_cast<int>(rng.below(static_cast<uint64_t>(n_out))));
  }
  return d;
}

void gradient_check(Loss loss) {
  Mlp net({5, 7, 6, 4});
  net.init(3);
  for (double& p : net.params()) p += 0.01;  // non-zero biases: fewer ReLU kinks at exactly 0
  const Dataset d = random_dataset(loss, 5, 4, 9, 11);
  std::vector<size_t> rows(d.rows());
  std::iota(rows.begin(), rows.end(), size_t{0});
  Mlp::Workspace ws = net.workspace();
  std::vector<double> grad(net.params().size(), 0.0);
  batch_loss(net, loss, d, rows.data(), rows.size(), ws, grad.data());
  const double h = 1e-6;
  double worst = 0;
  for (size_t k = 0; k < net.params().size(); ++k) {
    const double keep = net.params()[k];
    net.params()[k] = keep + h;
    const double up = batch_loss(net, loss, d, rows.data(), rows.size(), ws, nullptr);
    net.params()[k] = keep - h;
    const double down = batch_loss(net, loss, d, rows.data(), rows.size(), ws, nullptr);
    net.params()[k] = keep;
    const double numeric = (up - down) / (2 * h);
    const double err = std::abs(numeric - grad[k]) / std::max(1e-4, std::abs(numeric) + std::abs(grad[k]));
    worst = std::max(worst, err);
    EXPECT_LT(err, 1e-5) << "parameter " << k << ": analytic " << grad[k] << ", numeric " << numeric;
  }
  EXPECT_LT(worst, 1e-5);
}

TEST(ControllerMlp, GradientMatchesFiniteDifferencesCrossEntropy) { gradient_check(Loss::kCrossEntropy); }
TEST(ControllerMlp, GradientMatchesFiniteDifferencesMse) { gradient_check(Loss::kMse); }

double accuracy(const Mlp& net, const Dataset& d) {
  Mlp::Workspace ws = net.workspace();
  int right = 0;
  for (size_t r = 0; r < d.rows(); ++r) {
    const double* out = net.forward(d.row(r), ws);
    int best = 0;
    for (int k = 1; k < net.outputs(); ++k)
      if (out[k] > out[best]) best = k;
    right += best == d.label[r];
  }
  return static_cast<double>(right) / static_cast<double>(d.rows());
}

TEST(ControllerMlp, LearnsALinearlySeparableProblem) {
  // Two Gaussian blobs split by the line x0 + 2 x1 = 0 (points within 0.2 of it dropped).
  SplitMix64 rng(5);
  Dataset d;
  d.n_in = 2;
  while (d.rows() < 400) {
    const double a = rng.normal() * 2, b = rng.normal() * 2;
    const double s = a + 2 * b;
    if (std::abs(s) < 0.2) continue;
    d.x.insert(d.x.end(), {a, b});
    d.label.push_back(s > 0 ? 1 : 0);
  }
  Mlp net({2, 16, 16, 2});
  FitOptions o;
  o.epochs = 200;
  o.lr = 0.01;
  o.batch = 32;
  o.patience = 1000;
  fit(net, Loss::kCrossEntropy, d, d, o);
  EXPECT_EQ(accuracy(net, d), 1.0);
}

TEST(ControllerMlp, LearnsXor) {
  Dataset d;
  d.n_in = 2;
  for (int rep = 0; rep < 8; ++rep)
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 2; ++b) {
        d.x.insert(d.x.end(), {a ? 1.0 : -1.0, b ? 1.0 : -1.0});
        d.label.push_back(a ^ b);
      }
  Mlp net({2, 8, 8, 2});
  FitOptions o;
  o.epochs = 500;
  o.lr = 0.01;
  o.batch = 8;
  o.patience = 1000;
  const FitResult r = fit(net, Loss::kCrossEntropy, d, d, o);
  EXPECT_EQ(accuracy(net, d), 1.0);
  EXPECT_LT(r.best_val_loss, 0.05);
  // A linear model (no hidden layer) cannot: XOR is not linearly separable.
  Mlp linear({2, 2});
  fit(linear, Loss::kCrossEntropy, d, d, o);
  EXPECT_LE(accuracy(linear, d), 0.75);
}

TEST(ControllerMlp, RegressionFitsASmoothFunction) {
  SplitMix64 rng(9);
  Dataset d;
  d.n_in = 1;
  d.n_targets = 1;
  for (int i = 0; i < 256; ++i) {
    const double x = 4 * rng.uniform() - 2;
    d.x.push_back(x);
    d.y.push_back(x * x - 1);
  }
  Mlp net({1, 32, 32, 1});
  FitOptions o;
  o.lr = 0.01;
  o.epochs = 300;
  o.patience = 1000;
  const FitResult r = fit(net, Loss::kMse, d, d, o);
  EXPECT_LT(r.best_val_loss, 0.01);  // the targets' variance is 0.71
}

TEST(ControllerMlp, SameSeedSameWeightsOtherSeedOtherWeights) {
  const Dataset d = random_dataset(Loss::kCrossEntropy, 3, 4, 100, 1);
  FitOptions o;
  o.epochs = 5;
  Mlp a({3, 8, 4}), b({3, 8, 4}), c({3, 8, 4});
  fit(a, Loss::kCrossEntropy, d, d, o);
  fit(b, Loss::kCrossEntropy, d, d, o);
  o.seed = 1;
  fit(c, Loss::kCrossEntropy, d, d, o);
  EXPECT_EQ(a.params(), b.params());
  EXPECT_NE(a.params(), c.params());
}

TEST(ControllerMlp, EarlyStoppingKeepsTheBestValidationEpoch) {
  const Dataset train = random_dataset(Loss::kMse, 4, 2, 64, 2);
  const Dataset val = random_dataset(Loss::kMse, 4, 2, 64, 3);  // unrelated: validation loss soon rises
  Mlp net({4, 64, 2});
  FitOptions o;
  o.epochs = 400;
  o.lr = 0.01;
  o.patience = 10;
  const FitResult r = fit(net, Loss::kMse, train, val, o);
  EXPECT_LT(r.epochs_run, 400);
  EXPECT_EQ(r.epochs_run, r.best_epoch + 10);
  EXPECT_NEAR(dataset_loss(net, Loss::kMse, val), r.best_val_loss, 1e-12);
  for (const EpochRecord& e : r.curve) EXPECT_GE(e.val_loss, r.best_val_loss);
}

TEST(ControllerMlp, EmptySplitsAreErrors) {
  const Dataset d = random_dataset(Loss::kMse, 2, 1, 8, 4);
  Dataset empty;
  empty.n_in = 2;
  Mlp net({2, 1});
  EXPECT_THROW(fit(net, Loss::kMse, empty, d, FitOptions{}), Error);
  EXPECT_THROW(fit(net, Loss::kMse, d, empty, FitOptions{}), Error);
}

TEST(ControllerMlp, PrngIsFullySpecified) {
  // splitmix64's reference outputs for seed 0 (Vigna's splitmix64.c).
  SplitMix64 r(0);
  EXPECT_EQ(r.next(), 0xE220A8397B1DCDAFull);
  EXPECT_EQ(r.next(), 0x6E789E6AA1B965F4ull);
  SplitMix64 b(7);
  for (int i = 0; i < 1000; ++i) {
    const uint64_t v = b.below(3);
    EXPECT_LT(v, 3u);
    const double u = b.uniform();
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

}  // namespace
}  // namespace kvd
