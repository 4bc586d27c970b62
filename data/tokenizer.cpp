#include "data/tokenizer.h"

#include "data/bpe_tokenizer.h"
#include "data/byte_tokenizer.h"

namespace pt::data {

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& name_or_path) {
  if (name_or_path == "byte") return std::make_unique<ByteTokenizer>();
  return std::make_unique<BpeTokenizer>(BpeTokenizer::load(name_or_path));
}

}  // namespace pt::data
