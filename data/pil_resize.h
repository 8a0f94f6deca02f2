// Pillow's Image.resize for 8-bit images, reproduced bit for bit, so that images prepared here
// match those of Python pipelines (DiT's center_crop_arr) pixel for pixel.
//
// What Pillow does (src/libImaging/Resample.c, Pillow 7.0 and later; checked against 9.4):
// - Separable: a horizontal pass, then a vertical pass; a pass whose size does not change is
//   skipped, and nothing changing is a copy. Each pass rounds and clips to uint8.
// - Weights per output index i of an axis of n_in -> n_out pixels: scale = n_in / n_out,
//   filter_scale = max(scale, 1) (downscaling widens the kernel: antialiasing),
//   support = filter support * filter_scale, centre = (i + 0.5) * scale; inputs
//   trunc(centre - support + 0.5) ... trunc(centre + support + 0.5) - 1 (clamped to the image)
//   weigh filter((j - centre + 0.5) / filter_scale), normalised to sum 1.
// - Fixed point: each weight becomes trunc(w * 2^22 +- 0.5) (22 = 32 - 8 - 2 bits: 8-bit pixels
//   and 2 bits of headroom for negative lobes); a pixel is (2^21 + sum pixel * weight) >> 22,
//   clipped to [0, 255].
// - Filters: BOX is 1 on (-0.5, 0.5] (support 0.5; Pillow before 7.0 used [-0.5, 0.5), which
//   moves a tap where a box edge falls exactly on a pixel centre); BICUBIC is Keys' cubic with
//   a = -0.5 (support 2), unlike OpenCV's INTER_CUBIC (a = -0.75, no antialiasing).
// The weights are computed in double in Pillow's order; a build that fuses multiply-adds (FMA
// with -ffp-contract=fast, e.g. -march=native) may move a rare weight by one fixed-point step.
#pragma once
#include <opencv2/core/mat.hpp>

namespace ditlab {

enum class PilFilter { kBox, kBicubic };

// image.resize((width, height), resample=BOX or BICUBIC) of Pillow for an 8-bit image of 1 to 4
// interleaved channels (each channel resampled alike, as Pillow's L and RGB modes; Pillow's RGBA
// premultiplies alpha, which this does not). Weights are computed once per axis per call.
cv::Mat pil_resize(const cv::Mat& image, int width, int height, PilFilter filter);

}  // namespace ditlab
