// libFuzzer target: the token-file reader and the data loader over it. Input: 4 bytes of
// settings (dtype, end-of-document token, packing, context length, ranks, vocabulary size),
// then the token file. Bad files must end in cadre::Error; accepted ones must give every rank
// batches of in-range tokens whose lengths add up, as the packing promises.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "common/error.h"
#include "runtime/data.h"

namespace {

[[noreturn]] void broken(const char* what) {
  std::fprintf(stderr, "fuzz_token_file: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  const std::string dtype = (data[0] & 1) ? "uint32" : "uint16";
  const uint32_t eod = data[1] % 4;
  const char* packings[] = {"whole", "fill", "span"};
  const std::string packing = packings[(data[0] >> 1) % 3];
  const int64_t context = 2 + data[2] % 64;
  const int world = 1 + (data[3] & 3);
  const int64_t vocab = 64 + (data[3] >> 2) * 16;  // some files hold larger tokens: refused

  const char* dir = std::getenv("CADRE_FUZZ_SCRATCH");
  static const std::string path =
      std::string(dir ? dir : "/tmp") + "/cadre_fuzz_tokens." + std::to_string(::getpid());
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data + 4), static_cast<std::streamsize>(size - 4));
  }
  cadre::config::DataConfig config;
  config.set_token_file(path);
  config.set_token_dtype(dtype);
  config.set_eod_token(eod);
  config.set_packing(packing);
  config.set_context_length(context);
  try {
    const auto documents = cadre::runtime::load_token_file(path, dtype, eod);
    for (const auto& doc : documents) {
      if (doc.empty()) broken("an empty document was returned");
      for (uint32_t t : doc) {
        if (t == eod) broken("an end-of-document token inside a document");
      }
    }
    for (int rank = 0; rank < world; ++rank) {
      cadre::runtime::DataLoader loader(config, vocab, rank, world);
      for (int step = 0; step < 3; ++step) {
        const cadre::runtime::RankBatch batch = loader.next();
        int64_t total = 0;
        for (int64_t n : batch.doc_lengths) {
          if (n < 1) broken("a document of no tokens in a batch");
          total += n;
        }
        if (total != batch.token_count() || total > context) broken("batch lengths do not add up");
        if (packing != "whole" && total != context) broken("fill/span batch is not context_length");
        const int64_t* tokens = batch.tokens.data_ptr<int64_t>();
        for (int64_t i = 0; i < total; ++i) {
          if (tokens[i] < 0 || tokens[i] >= vocab) broken("a token outside the vocabulary");
        }
      }
    }
  } catch (const cadre::Error&) {
  }
  return 0;
}
