// Reads documents from input files, in pieces small enough to encode in parallel.
//
// Formats: "text"  - each file is one document;
//          "lines" - each non-empty line is one document (a trailing '\r' is dropped);
//          "jsonl" - each non-blank line is a JSON object whose string field (`text_field`) is one document.
// Empty documents are skipped. A long document comes in several chunks, cut only where the GPT-2
// pre-tokenizer cuts too (data/pretokenize.h: is_safe_cut), so encoding the chunks one by one gives
// exactly the tokens of the whole.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace pt::data {

enum class TextFormat { kText, kLines, kJsonl };
// "text" | "lines" | "jsonl"; throws std::invalid_argument otherwise.
TextFormat parse_text_format(const std::string& name);

struct TextChunk {
  std::string text;
  bool starts_document = false;
};

class DocumentReader {
 public:
  DocumentReader(std::vector<std::string> files, TextFormat format, std::string text_field = "text",
                 size_t chunk_bytes = size_t{1} << 20);
  // The next chunk; false after the last one. Throws std::runtime_error naming the file (and line).
  bool next(TextChunk& chunk);
  uint64_t bytes_read() const { return bytes_read_; }  // of the input files
  uint64_t total_bytes() const { return total_bytes_; }

 private:
  bool open_next_file();
  bool next_text_chunk(TextChunk& chunk);
  bool next_line_document(TextChunk& chunk);

  std::vector<std::string> files_;
  TextFormat format_;
  std::string text_field_;
  size_t chunk_bytes_;
  size_t file_index_ = 0;  // of the next file to open
  std::ifstream in_;
  bool open_ = false;
  int64_t line_ = 0;
  bool file_started_ = false;  // text: whether the open file's first chunk has been returned
  std::string buffer_;          // text: read but not yet returned
  uint64_t bytes_read_ = 0, total_bytes_ = 0;
};

}  // namespace pt::data
