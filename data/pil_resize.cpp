#ifdef DITLAB_WITH_OPENCV
#include "data/pil_resize.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "src/common/error.h"

namespace ditlab {
namespace {

constexpr int kPrecisionBits = 22;  // 32 - 8 - 2: 8-bit pixels, 2 bits of headroom (header)
constexpr int32_t kHalf = 1 << (kPrecisionBits - 1);  // rounds the final shift to nearest

// 1 on (-0.5, 0.5]: the half-open side is Pillow's (since 7.0), and it decides which pixel a box
// takes where the box edge falls exactly on a pixel centre (halving a width of 2^k + 1).
double box_filter(double x) {
  return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0;
}

// Keys' cubic convolution kernel with a = -0.5 (a + 2 = 1.5, a + 3 = 2.5), each product rounded
// in the order Pillow rounds it.
double bicubic_filter(double x) {
  x = std::abs(x);
  if (x < 1.0) return ((1.5 * x - 2.5) * x) * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5;
  return 0.0;
}

// The fixed-point weights of one axis: output i reads count[i] inputs from first[i] on, with
// weights[i * taps ... i * taps + count[i] - 1].
struct AxisWeights {
  int taps = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;  // [n_out, taps]
};

AxisWeights axis_weights(int in_size, int out_size, PilFilter filter) {
  const bool box = filter == PilFilter::kBox;
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);  // downscaling stretches the kernel
  const double support = (box ? 0.5 : 2.0) * filter_scale;
  const double inv_filter_scale = 1.0 / filter_scale;
  AxisWeights axis;
  axis.taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  axis.first.resize(out_size);
  axis.count.resize(out_size);
  axis.weights.assign(static_cast<size_t>(out_size) * axis.taps, 0);
  std::vector<double> w(axis.taps);
  for (int i = 0; i < out_size; ++i) {
    const double centre = (i + 0.5) * scale;
    // The casts truncate toward zero, as Pillow's do (the clamps make that equal to floor).
    const int first = std::max(static_cast<int>(centre - support + 0.5), 0);
    const int end = std::min(static_cast<int>(centre + support + 0.5), in_size);
    const int count = end - first;
    DITLAB_ASSERT(count >= 1 && count <= axis.taps, "pil_resize: ", count, " inputs for ",
                  axis.taps, " taps");
    double total = 0.0;
    for (int j = 0; j < count; ++j) {
      const double x = ((first + j) - centre + 0.5) * inv_filter_scale;
      w[j] = box ? box_filter(x) : bicubic_filter(x);
      total += w[j];
    }
    int32_t* fixed = &axis.weights[static_cast<size_t>(i) * axis.taps];
    for (int j = 0; j < count; ++j) {
      const double normalised = total != 0.0 ? w[j] / total : w[j];
      const double scaled = normalised * (1 << kPrecisionBits);  // rounded half away from 0:
      fixed[j] = static_cast<int32_t>(normalised < 0 ? scaled - 0.5 : scaled + 0.5);
    }
    axis.first[i] = first;
    axis.count[i] = count;
  }
  return axis;
}

// (2^21 + sum) >> 22, clipped to [0, 255]; a negative sum shifts to a negative value, hence 0.
inline uint8_t to_uint8(int32_t sum) {
  if (sum < 0) return 0;
  return static_cast<uint8_t>(std::min<int32_t>(sum >> kPrecisionBits, 255));
}

// Rows row_begin ... row_begin + out.rows - 1 of `in`, resampled along x into `out`.
template <int C>
void resample_horizontal(const cv::Mat& in, int row_begin, const AxisWeights& axis, cv::Mat& out) {
  for (int y = 0; y < out.rows; ++y) {
    const uint8_t* src = in.ptr<uint8_t>(row_begin + y);
    uint8_t* dst = out.ptr<uint8_t>(y);
    for (int x = 0; x < out.cols; ++x) {
      const int32_t* w = &axis.weights[static_cast<size_t>(x) * axis.taps];
      const uint8_t* p = src + static_cast<size_t>(axis.first[x]) * C;
      int32_t sum[C];
      for (int c = 0; c < C; ++c) sum[c] = kHalf;
      for (int j = 0; j < axis.count[x]; ++j) {
        for (int c = 0; c < C; ++c) sum[c] += p[j * C + c] * w[j];
      }
      for (int c = 0; c < C; ++c) dst[x * C + c] = to_uint8(sum[c]);
    }
  }
}

// `in` resampled along y into `out`; row 0 of `in` is row `row_begin` of the source axis.
// Channels need no distinction here: each output row is a weighted sum of whole input rows.
void resample_vertical(const cv::Mat& in, int row_begin, const AxisWeights& axis, cv::Mat& out) {
  const int values = out.cols * out.channels();
  std::vector<int32_t> sum(values);
  for (int y = 0; y < out.rows; ++y) {
    std::fill(sum.begin(), sum.end(), kHalf);
    const int32_t* w = &axis.weights[static_cast<size_t>(y) * axis.taps];
    for (int j = 0; j < axis.count[y]; ++j) {
      const uint8_t* src = in.ptr<uint8_t>(axis.first[y] - row_begin + j);
      const int32_t weight = w[j];
      for (int v = 0; v < values; ++v) sum[v] += src[v] * weight;
    }
    uint8_t* dst = out.ptr<uint8_t>(y);
    for (int v = 0; v < values; ++v) dst[v] = to_uint8(sum[v]);
  }
}

}  // namespace

cv::Mat pil_resize(const cv::Mat& image, int width, int height, PilFilter filter) {
  DITLAB_ASSERT(!image.empty() && image.depth() == CV_8U && image.channels() <= 4,
                "pil_resize takes 8-bit images of 1 to 4 channels");
  DITLAB_ASSERT(width >= 1 && height >= 1, "pil_resize: target size ", width, "x", height);
  const bool horizontal = width != image.cols, vertical = height != image.rows;
  if (!horizontal && !vertical) return image.clone();

  AxisWeights row_weights;
  if (vertical) row_weights = axis_weights(image.rows, height, filter);
  cv::Mat current = image;
  int row_begin = 0;  // the source row that is row 0 of `current`
  if (horizontal) {
    // Only the rows the vertical pass reads (its weights are monotone: the last output reads
    // the last rows).
    int row_end = image.rows;
    if (vertical) {
      row_begin = row_weights.first.front();
      row_end = row_weights.first.back() + row_weights.count.back();
    }
    const AxisWeights column_weights = axis_weights(image.cols, width, filter);
    cv::Mat out(row_end - row_begin, width, image.type());
    switch (image.channels()) {
      case 1:
        resample_horizontal<1>(image, row_begin, column_weights, out);
        break;
      case 2:
        resample_horizontal<2>(image, row_begin, column_weights, out);
        break;
      case 3:
        resample_horizontal<3>(image, row_begin, column_weights, out);
        break;
      default:
        resample_horizontal<4>(image, row_begin, column_weights, out);
        break;
    }
    current = out;
  }
  if (!vertical) return current;
  cv::Mat out(height, width, image.type());
  resample_vertical(current, row_begin, row_weights, out);
  return out;
}

}  // namespace ditlab
#endif  // DITLAB_WITH_OPENCV
