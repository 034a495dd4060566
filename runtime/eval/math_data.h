// The math-evaluation datasets as published with the Qwen2.5-Math evaluation (one directory per
// dataset holding test.jsonl), their gold answers, and the prompt templates (resa-spec.md §6.3).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace resa {

struct MathProblem {
  std::string dataset;
  int index = 0;         // 0-based line among the dataset's problems
  std::string id;        // the file's own id ("id", "idx" or "source"), else the index
  std::string question;
  std::string gold_raw;  // the gold answer as the file gives it (or as extracted from solution)
  std::string gold;      // normalised for grading (NormalizeAnswer)
};

// Names LoadMathDataset knows, in the order the paper reports them, then gsm8k.
const std::vector<std::string>& KnownMathDatasets();

// Reads <dir>/<name>/test.jsonl. Per dataset: the question is "question" or "problem"; the gold
// answer is "answer" after "####" (gsm8k), the last \boxed{} of "solution" (minerva_math),
// "final_answer"[0] (olympiadbench), "answer" (gaokao2023en, aime24, amc23). Errors name the
// file and line; InvalidArgument for an unknown name lists the known ones.
absl::StatusOr<std::vector<MathProblem>> LoadMathDataset(const std::string& dir,
                                                         const std::string& name);

// The gold answer of one parsed JSONL record (exposed for tests); `record_json` is the line.
absl::StatusOr<std::string> RawGoldAnswer(std::string_view record_json, std::string_view dataset);

enum class PromptTemplate {
  kR1,    // "Please reason step by step, and put your final answer within \boxed{}.\n{q}\n\n<think>\n"
  kChat,  // the model's chat template, user turn "{q}\nPlease reason step by step, ..."
};
absl::StatusOr<PromptTemplate> ParsePromptTemplate(std::string_view name);

// The r1 text for `question`; kChat callers render ChatInstruction(question) as a user turn.
std::string R1Prompt(std::string_view question);
std::string ChatInstruction(std::string_view question);

}  // namespace resa
