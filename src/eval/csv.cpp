// CSV reading (kvdial stats, kvdial train) and the writer's helpers (kvdial collect).
#include "eval/csv.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "util/error.h"

namespace kvd {

std::string join_csv(const std::vector<std::string>& cells) {
  std::string s;
  for (size_t i = 0; i < cells.size(); ++i) s += (i ? "," : "") + cells[i];
  return s;
}

std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> out;
  size_t i = 0;
  while (true) {
    const size_t j = line.find(',', i);
    out.push_back(line.substr(i, j == std::string::npos ? std::string::npos : j - i));
    if (j == std::string::npos) break;
    i = j + 1;
  }
  return out;
}

// Reads an interrupted CSV: checks its header, drops a trailing partial line, returns the rows kept.
int64_t csv_resume_rows(const std::string& path, const std::string& header, size_t n_cols) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open file to resume");
  std::string line;
  int64_t rows = 0, line_no = 0;
  std::streamoff good_end = 0;
  while (true) {
    const std::streamoff start = in.tellg();
    if (!std::getline(in, line)) break;
    const bool complete = !in.eof();  // getline stopped at a newline
    ++line_no;
    if (!complete) break;  // a partial last row: dropped below
    if (line_no == 1) {
      if (line != header)
        throw Error(path + ":1: header differs from this run's columns; cannot resume (expected '" + header +
                    "')");
    } else {
      if (split_csv_line(line).size() != n_cols)
        throw Error(path + ":" + std::to_string(line_no) + ": expected " + std::to_string(n_cols) +
                    " columns; cannot resume");
      ++rows;
    }
    good_end = start + static_cast<std::streamoff>(line.size()) + 1;
  }
  in.close();
  if (line_no == 0 || good_end == 0) throw Error(path + ": no header line; cannot resume");
  std::filesystem::resize_file(path, static_cast<uintmax_t>(good_end));
  return rows;
}

int CsvTable::column(const std::string& name) const {
  const auto it = std::find(columns.begin(), columns.end(), name);
  return it == columns.end() ? -1 : static_cast<int>(it - columns.begin());
}

CsvTable read_csv_table(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open file");
  return read_csv_table(in, path);
}

CsvTable read_csv_table(std::istream& in, const std::string& path) {
  CsvTable t;
  t.path = path;
  std::string line;
  int line_no = 0;
  int split_col = -1;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line_no == 1) {
      t.columns = split_csv_line(line);
      for (size_t i = 0; i < t.columns.size(); ++i) {
        if (t.columns[i].empty())
          throw Error(path + ":1: header column " + std::to_string(i + 1) + " has no name");
        if (std::find(t.columns.begin(), t.columns.begin() + static_cast<std::ptrdiff_t>(i), t.columns[i]) !=
            t.columns.begin() + static_cast<std::ptrdiff_t>(i))
          throw Error(path + ":1: header column '" + t.columns[i] + "' appears twice");
      }
      for (const char* need : {"entropy", "rarity", "attn_var", "kv_bits", "latency", "accuracy"})
        if (t.column(need) < 0) throw Error(path + ":1: header lacks the column '" + std::string(need) + "'");
      split_col = t.column("split");
      t.values.assign(t.columns.size(), {});
      continue;
    }
    if (line.empty()) continue;
    const std::vector<std::string> cells = split_csv_line(line);
    if (cells.size() != t.columns.size())
      throw Error(path + ":" + std::to_string(line_no) + ": " + std::to_string(cells.size()) +
                  " columns, the header has " + std::to_string(t.columns.size()));
    for (size_t c = 0; c < cells.size(); ++c) {
      if (static_cast<int>(c) == split_col) {
        t.split.push_back(cells[c]);
        t.values[c].push_back(0);
        continue;
      }
      const char* s = cells[c].c_str();
      char* end = nullptr;
      const double v = std::strtod(s, &end);
      if (cells[c].empty() || end != s + cells[c].size() || !std::isfinite(v))
        throw Error(path + ":" + std::to_string(line_no) + ": column '" + t.columns[c] + "': '" + cells[c] +
                    "' is not a finite number");
      t.values[c].push_back(v);
    }
  }
  if (line_no == 0) throw Error(path + ": empty file (no header)");
  if (t.rows() == 0) throw Error(path + ": no data rows after the header");
  return t;
}

}  // namespace kvd
