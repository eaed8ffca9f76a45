// attnvgg-classify: a build's camera-frame IR classifying images, with no Python and no manifest.
//
//   attnvgg-classify build/se/engines/openvino/model.int8.frame.xml photo.png [more.png ...]
//                    [--logits out.txt]
//
// Everything it needs is read from the IR itself (docs/edge.md, "What each file says"): the class
// names (rt_info attnvgg/classes), the preprocessing (attnvgg/preprocessing: resize, crop) and the
// input (attnvgg/input: uint8 NHWC frames, normalized inside the model). Images are decoded by stb
// (Debian's libstb-dev), resized on the shorter side to `resize` and center-cropped to `crop`; an
// image already at the crop size is taken as a frame at the model's size and fed as it is. stb's
// resize filter is not PIL's, so a resized image's logits are close to, not equal to, what
// `attnvgg-runtime classify` computes. Prints each image's top 5 classes with their probabilities;
// --logits writes the raw logits, one line per image (make test-cpp compares them).
#include <openvino/openvino.hpp>

#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>
#define STB_IMAGE_RESIZE_IMPLEMENTATION
#include <stb/stb_image_resize.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// The few JSON shapes the metadata uses: a list of strings, a number or a list of numbers under a
// key. (The values are written by attnvgg_runtime.metadata.describe, one line each.)
std::vector<std::string> json_strings(const std::string& text) {
    std::vector<std::string> out;
    for (size_t i = 0; i < text.size(); ++i) {
        if (text[i] != '"') continue;
        std::string value;
        for (++i; i < text.size() && text[i] != '"'; ++i) {
            if (text[i] == '\\' && i + 1 < text.size()) ++i;  // \" and \\ (names are plain text)
            value += text[i];
        }
        out.push_back(value);
    }
    return out;
}

std::vector<double> json_numbers(const std::string& text, const std::string& key) {
    size_t at = text.find("\"" + key + "\"");
    if (at == std::string::npos) throw std::runtime_error("the preprocessing names no " + key);
    at = text.find(':', at) + 1;
    size_t end = text[text.find_first_not_of(' ', at)] == '[' ? text.find(']', at) : text.find_first_of(",}", at);
    std::vector<double> out;
    std::string numbers = text.substr(at, end - at);
    std::replace_if(numbers.begin(), numbers.end(), [](char c) { return c == '[' || c == ','; }, ' ');
    std::istringstream in(numbers);
    for (double v; in >> v;) out.push_back(v);
    return out;
}

std::string metadata(const std::shared_ptr<ov::Model>& model, const std::string& key) {
    if (!model->has_rt_info("attnvgg", key))
        throw std::runtime_error("the model has no rt_info attnvgg/" + key +
                                 ": it is not an attnvgg-export artifact with metadata (schema 1.8 on)");
    return model->get_rt_info<std::string>("attnvgg", key);
}

// An RGB frame of crop_h x crop_w: the image itself where it is that size, else its shorter side
// resized to `resize` and the center cropped (as attnvgg_runtime.classify.preprocess does).
std::vector<uint8_t> frame_of(const std::string& path, int resize, int crop_h, int crop_w) {
    int width = 0, height = 0, channels = 0;
    uint8_t* pixels = stbi_load(path.c_str(), &width, &height, &channels, 3);
    if (!pixels) throw std::runtime_error("cannot read image " + path + ": " + stbi_failure_reason());
    std::vector<uint8_t> image(pixels, pixels + size_t(width) * height * 3);
    stbi_image_free(pixels);
    if (width == crop_w && height == crop_h) return image;
    int new_w = width <= height ? resize : int(double(resize) * width / height);
    int new_h = width <= height ? int(double(resize) * height / width) : resize;
    std::vector<uint8_t> resized(size_t(new_w) * new_h * 3);
    stbir_resize_uint8_generic(image.data(), width, height, 0, resized.data(), new_w, new_h, 0, 3,
                               STBIR_ALPHA_CHANNEL_NONE, 0, STBIR_EDGE_CLAMP, STBIR_FILTER_TRIANGLE,
                               STBIR_COLORSPACE_LINEAR, nullptr);
    int top = int(std::lround((new_h - crop_h) / 2.0)), left = int(std::lround((new_w - crop_w) / 2.0));
    std::vector<uint8_t> frame(size_t(crop_w) * crop_h * 3);
    for (int y = 0; y < crop_h; ++y)
        std::copy_n(&resized[(size_t(top + y) * new_w + left) * 3], size_t(crop_w) * 3, &frame[size_t(y) * crop_w * 3]);
    return frame;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> images;
    std::string model_path, logits_path;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg == "--logits" && i + 1 < argc) logits_path = argv[++i];
        else if (model_path.empty()) model_path = arg;
        else images.push_back(arg);
    }
    if (model_path.empty() || images.empty()) {
        std::cerr << "usage: attnvgg-classify MODEL.frame.xml IMAGE... [--logits FILE]\n";
        return 2;
    }
    try {
        ov::Core core;
        std::shared_ptr<ov::Model> model = core.read_model(model_path);
        const std::vector<std::string> classes = json_strings(metadata(model, "classes"));
        const std::string input = metadata(model, "input"), pre = metadata(model, "preprocessing");
        if (input.find("\"uint8\"") == std::string::npos || input.find("\"NHWC\"") == std::string::npos)
            throw std::runtime_error("its input is " + input + ": this program feeds uint8 NHWC frames; "
                                     "give the build's camera-frame IR (model.int8.frame.xml)");
        const bool bgr = input.find("\"BGR\"") != std::string::npos;
        const int resize = int(json_numbers(pre, "resize").at(0));
        const std::vector<double> crop = json_numbers(pre, "crop");
        const int crop_h = int(crop.at(0)), crop_w = int(crop.at(1));

        std::vector<uint8_t> batch;
        for (const std::string& path : images) {
            std::vector<uint8_t> frame = frame_of(path, resize, crop_h, crop_w);
            if (bgr)
                for (size_t p = 0; p < frame.size(); p += 3) std::swap(frame[p], frame[p + 2]);
            batch.insert(batch.end(), frame.begin(), frame.end());
        }
        ov::CompiledModel compiled = core.compile_model(model, "CPU", ov::hint::inference_precision(ov::element::f32));
        ov::InferRequest request = compiled.create_infer_request();
        ov::Tensor frames(ov::element::u8, {images.size(), size_t(crop_h), size_t(crop_w), 3}, batch.data());
        request.set_input_tensor(frames);
        request.infer();
        const ov::Tensor out = request.get_output_tensor();
        const size_t n_classes = out.get_shape().at(1);
        if (n_classes != classes.size())
            throw std::runtime_error("the model computes " + std::to_string(n_classes) + " logits but its "
                                     "metadata names " + std::to_string(classes.size()) + " classes");
        const float* logits = out.data<const float>();
        std::ofstream logits_file;
        if (!logits_path.empty()) logits_file.open(logits_path);
        for (size_t i = 0; i < images.size(); ++i) {
            const float* row = logits + i * n_classes;
            const float top_logit = *std::max_element(row, row + n_classes);
            double sum = 0;
            for (size_t c = 0; c < n_classes; ++c) sum += std::exp(double(row[c]) - top_logit);
            std::vector<size_t> order(n_classes);
            std::iota(order.begin(), order.end(), 0);
            std::stable_sort(order.begin(), order.end(), [row](size_t a, size_t b) { return row[a] > row[b]; });
            std::cout << images[i] << ":";
            for (size_t k = 0; k < std::min<size_t>(5, n_classes); ++k)
                std::cout << (k ? ", " : " ") << classes[order[k]] << " "
                          << std::exp(double(row[order[k]]) - top_logit) / sum;
            std::cout << "\n";
            if (logits_file.is_open()) {
                logits_file.precision(9);
                for (size_t c = 0; c < n_classes; ++c) logits_file << (c ? " " : "") << row[c];
                logits_file << "\n";
            }
        }
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    }
    return 0;
}
