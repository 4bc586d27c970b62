#include "data/text_reader.h"

#include <filesystem>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "data/pretokenize.h"

namespace pt::data {

TextFormat parse_text_format(const std::string& name) {
  if (name == "text") return TextFormat::kText;
  if (name == "lines") return TextFormat::kLines;
  if (name == "jsonl") return TextFormat::kJsonl;
  throw std::invalid_argument("unknown input format '" + name + "' (expected text, lines or jsonl)");
}

DocumentReader::DocumentReader(std::vector<std::string> files, TextFormat format, std::string text_field, size_t chunk_bytes)
    : files_(std::move(files)), format_(format), text_field_(std::move(text_field)), chunk_bytes_(chunk_bytes) {
  for (const std::string& f : files_) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(f, ec);
    if (ec) throw std::runtime_error(f + ": cannot read input file: " + ec.message());
    total_bytes_ += size;
  }
}

bool DocumentReader::open_next_file() {
  if (file_index_ >= files_.size()) return false;
  const std::string& path = files_[file_index_++];
  in_ = std::ifstream(path, std::ios::binary);
  if (!in_) throw std::runtime_error(path + ": cannot open input file");
  open_ = true;
  line_ = 0;
  file_started_ = false;
  buffer_.clear();
  return true;
}

bool DocumentReader::next(TextChunk& chunk) {
  for (;;) {
    if (!open_ && !open_next_file()) return false;
    if (format_ == TextFormat::kText ? next_text_chunk(chunk) : next_line_document(chunk)) return true;
    open_ = false;  // this file is done
  }
}

bool DocumentReader::next_text_chunk(TextChunk& chunk) {
  size_t searched = 0;  // buffer_[searched..] has not been searched for a cut yet
  for (;;) {
    if (buffer_.size() >= chunk_bytes_) {
      for (size_t pos = buffer_.size() - 1; pos > searched; --pos) {
        if (is_safe_cut(buffer_, pos)) {
          chunk.text = buffer_.substr(0, pos);
          buffer_.erase(0, pos);
          chunk.starts_document = !file_started_;
          file_started_ = true;
          return true;
        }
      }
      searched = buffer_.size() - 1;
    }
    const size_t old = buffer_.size();
    buffer_.resize(old + chunk_bytes_);
    in_.read(buffer_.data() + old, static_cast<std::streamsize>(chunk_bytes_));
    buffer_.resize(old + static_cast<size_t>(in_.gcount()));
    bytes_read_ += buffer_.size() - old;
    if (buffer_.size() == old) {  // end of file: the rest is the last chunk
      if (buffer_.empty()) return false;
      chunk.text = std::move(buffer_);
      buffer_.clear();
      chunk.starts_document = !file_started_;
      file_started_ = true;
      return true;
    }
  }
}

bool DocumentReader::next_line_document(TextChunk& chunk) {
  const std::string& path = files_[file_index_ - 1];
  std::string line;
  while (std::getline(in_, line)) {
    ++line_;
    bytes_read_ += line.size() + (in_.eof() ? 0 : 1);
    if (format_ == TextFormat::kLines) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) continue;
      chunk.text = std::move(line);
    } else {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = path + ":" + std::to_string(line_) + ": ";
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        throw std::runtime_error(where + "not valid JSON: " + e.what());
      }
      if (!j.is_object() || !j.contains(text_field_) || !j[text_field_].is_string()) {
        throw std::runtime_error(where + "no string field \"" + text_field_ + "\"");
      }
      chunk.text = j[text_field_].get<std::string>();
      if (chunk.text.empty()) continue;
    }
    chunk.starts_document = true;
    return true;
  }
  if (in_.bad()) throw std::runtime_error(path + ": read error");
  return false;
}

}  // namespace pt::data
