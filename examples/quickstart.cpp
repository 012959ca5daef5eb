// orthopt quickstart: the orthogonalized update of a 256×512 gradient, on the CPU with Eigen.
#include <orthopt/eigen.hpp>

#include <Eigen/SVD>
#include <cstdio>

int main() {
  const Eigen::MatrixXf gradient = Eigen::MatrixXf::Random(256, 512);
  Eigen::MatrixXf update(256, 512);

  // A plan for one shape and schedule: every buffer is allocated here, none in the call below.
  orthopt::newton_schulz<float, orthopt::eigen_backend> ns(256, 512, orthopt::ns_presets::polar_express());
  ns(orthopt::make_view(gradient), orthopt::make_view(update));  // update ≈ polar(gradient)

  // Newton–Schulz pulls every singular value towards 1 (Polar Express, 5 steps: to within about 0.16).
  const Eigen::VectorXf sigma = Eigen::JacobiSVD<Eigen::MatrixXf>(update).singularValues();
  std::printf("singular values of the update: %.3f .. %.3f\n", sigma.minCoeff(), sigma.maxCoeff());
  return sigma.minCoeff() > 0.8f && sigma.maxCoeff() < 1.2f ? 0 : 1;
}
