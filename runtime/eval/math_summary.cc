#include "runtime/eval/math_summary.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "runtime/eval/math_answer.h"
#include "runtime/eval/math_data.h"

namespace resa {

namespace {

namespace fs = std::filesystem;

// Position of `name` in `order`, or order.size() + (its rank among unknown names by text).
int Rank(const std::vector<std::string>& order, const std::string& name) {
  auto it = std::find(order.begin(), order.end(), name);
  return it != order.end() ? int(it - order.begin()) : int(order.size());
}

void SortBy(std::vector<std::string>& names, const std::vector<std::string>& order) {
  std::sort(names.begin(), names.end(), [&](const std::string& a, const std::string& b) {
    const int ra = Rank(order, a), rb = Rank(order, b);
    return ra != rb ? ra < rb : a < b;
  });
}

struct Means {
  double accuracy = 0, length = 0, blocks = 0;
  int datasets = 0, n = 0, truncated = 0;
};

Means ModeMeans(const MathSummary& s, size_t m) {
  Means r;
  int64_t read = 0, total = 0;
  for (size_t d = 0; d < s.datasets.size(); ++d) {
    const MathCell& c = s.cell(m, d);
    if (c.n == 0) continue;
    r.accuracy += c.accuracy();
    r.length += c.mean_length();
    ++r.datasets;
    r.n += c.n;
    r.truncated += c.truncated;
    read += c.blocks_read;
    total += c.blocks_total;
  }
  if (r.datasets > 0) {
    r.accuracy /= r.datasets;
    r.length /= r.datasets;
  }
  r.blocks = total > 0 ? 100.0 * double(read) / double(total) : 100.0;
  return r;
}

}  // namespace

absl::StatusOr<MathSummary> SummarizeMathDir(const std::string& dir,
                                             const SummaryOptions& options) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(dir, ": not a directory"));
  }
  struct Record {
    std::string dataset, mode;
    int index, sample;
    bool correct;
    double generated_tokens;
    bool truncated;
    int64_t blocks_read, blocks_total;
    std::string pred, output;
  };
  std::vector<Record> records;
  std::vector<std::string> datasets, modes;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file() && e.path().extension() == ".jsonl") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  for (const fs::path& path : files) {
    // "<dataset>.<mode>.jsonl"; other .jsonl files are not ours.
    const std::string stem = path.stem().string();
    const size_t dot = stem.rfind('.');
    if (dot == std::string::npos || dot == 0) continue;
    const std::string dataset = stem.substr(0, dot), mode = stem.substr(dot + 1);
    if (std::find(datasets.begin(), datasets.end(), dataset) == datasets.end()) {
      datasets.push_back(dataset);
    }
    if (std::find(modes.begin(), modes.end(), mode) == modes.end()) modes.push_back(mode);
    std::ifstream in(path);
    std::string line;
    for (int lineno = 1; std::getline(in, line); ++lineno) {
      if (line.empty()) continue;
      nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      const auto where = [&] { return absl::StrCat(path.string(), ":", lineno); };
      if (j.is_discarded() || !j.is_object()) {
        return absl::DataLossError(absl::StrCat(where(), ": not a JSON object"));
      }
      if (!j.contains("correct") || !j.contains("generated_tokens")) {
        return absl::DataLossError(absl::StrCat(where(), ": no correct/generated_tokens field"));
      }
      Record r{dataset, mode, j.value("index", -1), j.value("sample", 0),
               j["correct"].get<bool>(), j["generated_tokens"].get<double>(),
               j.value("finish_reason", "") == "length", 0, 0,
               j.value("pred", std::string()), j.value("output", std::string())};
      if (!j.contains("pred")) r.pred = ExtractAnswer(r.output, dataset);
      if (options.regrade) {
        if (!j.contains("output") || !j.contains("gold")) {
          return absl::DataLossError(absl::StrCat(where(), ": no output/gold to regrade"));
        }
        r.pred = ExtractAnswer(r.output, dataset);
        r.correct = MathEqual(r.pred, j["gold"].get<std::string>());
      }
      if (j.contains("report") && j["report"].is_object()) {
        r.blocks_read = j["report"].value("blocks_read", int64_t(0));
        r.blocks_total = j["report"].value("blocks_total", int64_t(0));
      }
      records.push_back(std::move(r));
    }
  }
  // Items per mode, for --paired; dense's record of each item, for the agreement.
  std::map<std::tuple<std::string, int, int>, std::set<std::string>> modes_of;
  std::map<std::tuple<std::string, int, int>, const Record*> dense_of;
  for (const Record& r : records) {
    modes_of[{r.dataset, r.index, r.sample}].insert(r.mode);
    if (r.mode == "dense") dense_of[{r.dataset, r.index, r.sample}] = &r;
  }
  std::map<std::pair<std::string, std::string>, MathAgreement> agreements;
  std::map<std::pair<std::string, std::string>, MathCell> cells;
  for (const Record& r : records) {
    if (options.paired && modes_of[{r.dataset, r.index, r.sample}].size() != modes.size()) continue;
    MathCell& cell = cells[{r.mode, r.dataset}];
    ++cell.n;
    cell.correct += r.correct ? 1 : 0;
    cell.generated_tokens += r.generated_tokens;
    cell.truncated += r.truncated ? 1 : 0;
    cell.blocks_read += r.blocks_read;
    cell.blocks_total += r.blocks_total;
    auto dense = dense_of.find({r.dataset, r.index, r.sample});
    if (r.mode != "dense" && dense != dense_of.end()) {
      const Record& d = *dense->second;
      MathAgreement& a = agreements[{r.mode, r.dataset}];
      ++a.n;
      a.same_answer += r.pred == d.pred || MathEqual(r.pred, d.pred) ? 1 : 0;
      a.same_output += r.output == d.output ? 1 : 0;
      a.correct_only_here += r.correct && !d.correct ? 1 : 0;
      a.correct_only_dense += d.correct && !r.correct ? 1 : 0;
    }
  }
  if (cells.empty()) {
    return absl::NotFoundError(absl::StrCat(dir, ": no <dataset>.<mode>.jsonl files"));
  }
  MathSummary s;
  SortBy(datasets, KnownMathDatasets());
  SortBy(modes, {"dense", "sparse", "resa"});
  s.datasets = datasets;
  s.modes = modes;
  s.cells.assign(modes.size(), std::vector<MathCell>(datasets.size()));
  if (!dense_of.empty()) {
    s.agreement.assign(modes.size(), std::vector<MathAgreement>(datasets.size()));
  }
  for (size_t m = 0; m < modes.size(); ++m) {
    for (size_t d = 0; d < datasets.size(); ++d) {
      if (auto it = cells.find({modes[m], datasets[d]}); it != cells.end()) {
        s.cells[m][d] = it->second;
      }
      if (auto it = agreements.find({modes[m], datasets[d]}); it != agreements.end()) {
        s.agreement[m][d] = it->second;
      }
    }
  }
  return s;
}

std::string SummaryMarkdown(const MathSummary& s) {
  std::string out = "| mode |";
  std::string rule = "|---|";
  for (const std::string& d : s.datasets) {
    absl::StrAppend(&out, " ", d, " |");
    rule += "---:|";
  }
  absl::StrAppend(&out, " Avg | avg length (tokens) | blocks read | cut at budget |\n", rule,
                  "---:|---:|---:|---:|\n");
  for (size_t m = 0; m < s.modes.size(); ++m) {
    absl::StrAppend(&out, "| ", s.modes[m], " |");
    for (size_t d = 0; d < s.datasets.size(); ++d) {
      const MathCell& c = s.cell(m, d);
      if (c.n == 0) {
        out += " - |";
      } else {
        absl::StrAppend(&out, absl::StrFormat(" %.1f (%d/%d) |", c.accuracy(), c.correct, c.n));
      }
    }
    const Means mean = ModeMeans(s, m);
    absl::StrAppend(&out, absl::StrFormat(" **%.2f** | %.1f | %.1f%% | %d/%d |\n", mean.accuracy,
                                          mean.length, mean.blocks, mean.truncated, mean.n));
  }
  // The paper's length row, per dataset (every mode's).
  for (size_t m = 0; m < s.modes.size(); ++m) {
    absl::StrAppend(&out, "| avg length, ", s.modes[m], " |");
    for (size_t d = 0; d < s.datasets.size(); ++d) {
      const MathCell& c = s.cell(m, d);
      out += c.n == 0 ? std::string(" - |") : absl::StrFormat(" %.1f |", c.mean_length());
    }
    absl::StrAppend(&out, absl::StrFormat(" %.1f | | | |\n", ModeMeans(s, m).length));
  }
  // Each approximate mode against dense, on the problems both finished (all datasets).
  bool header = false;
  for (size_t m = 0; m < s.agreement.size(); ++m) {
    MathAgreement a;
    for (const MathAgreement& cell : s.agreement[m]) a.Add(cell);
    if (a.n == 0) continue;
    if (!header) {
      absl::StrAppend(&out,
                      "\n| vs dense | problems | same answer | identical output | right only "
                      "here | right only in dense |\n|---|---:|---:|---:|---:|---:|\n");
      header = true;
    }
    const auto pct = [&](int k) { return absl::StrFormat("%.1f%% (%d)", 100.0 * k / a.n, k); };
    absl::StrAppend(&out, absl::StrFormat("| %s | %d | %s | %s | %d | %d |\n", s.modes[m], a.n,
                                          pct(a.same_answer), pct(a.same_output),
                                          a.correct_only_here, a.correct_only_dense));
  }
  return out;
}

std::string SummaryCsv(const MathSummary& s) {
  std::string out =
      "mode,dataset,n,correct,accuracy,avg_generated_tokens,blocks_read_percent,truncated\n";
  for (size_t m = 0; m < s.modes.size(); ++m) {
    for (size_t d = 0; d < s.datasets.size(); ++d) {
      const MathCell& c = s.cell(m, d);
      if (c.n == 0) continue;
      absl::StrAppend(&out, absl::StrFormat("%s,%s,%d,%d,%.2f,%.1f,%.2f,%d\n", s.modes[m],
                                            s.datasets[d], c.n, c.correct, c.accuracy(),
                                            c.mean_length(), c.blocks_read_percent(),
                                            c.truncated));
    }
    const Means mean = ModeMeans(s, m);
    int correct = 0;
    for (size_t d = 0; d < s.datasets.size(); ++d) correct += s.cell(m, d).correct;
    absl::StrAppend(&out, absl::StrFormat("%s,avg,%d,%d,%.2f,%.1f,%.2f,%d\n", s.modes[m], mean.n,
                                          correct, mean.accuracy, mean.length, mean.blocks,
                                          mean.truncated));
  }
  return out;
}

}  // namespace resa
