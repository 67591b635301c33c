// The CSV files of kvdial collect, read by kvdial stats and kvdial train: a header line of column names,
// then rows of comma-separated cells (numbers; the `split` column holds text). The reader names the file
// and line of anything malformed; the writer's helpers join cells and check an interrupted file for resume.
#pragma once
#include <cstddef>
#include <cstdint>
#include <istream>
#include <string>
#include <vector>

namespace kvd {

// A CSV read for kvdial stats: a header, then rows of numbers; the `split` column holds text.
struct CsvTable {
  std::string path;
  std::vector<std::string> columns;
  std::vector<std::vector<double>> values;  // [column][row]; categorical columns hold 0
  std::vector<std::string> split;           // the `split` column, when present
  size_t rows() const { return values.empty() ? 0 : values[0].size(); }
  int column(const std::string& name) const;  // index, or -1
};

// Throws kvd::Error "FILE:LINE: ..." for a row of the wrong width or a value that is not a number,
// "FILE:1: ..." for a header without the seed's six columns, "FILE: ..." for an empty file.
CsvTable read_csv_table(const std::string& path);
// The same from a stream; `path` names it in the messages (fuzz/fuzz_csv.cpp reads from memory).
CsvTable read_csv_table(std::istream& in, const std::string& path);

// Cells joined with commas (no quoting: the cells collect writes hold no commas).
std::string join_csv(const std::vector<std::string>& cells);
// A line split at every comma (an empty line gives one empty cell).
std::vector<std::string> split_csv_line(const std::string& line);

// Prepares an interrupted CSV for appending: checks that its first line is `header` and that every
// complete line has n_cols cells, drops a trailing partial line (no newline), and returns the number of
// data rows kept. Throws kvd::Error "FILE:LINE: ..." naming what does not match.
int64_t csv_resume_rows(const std::string& path, const std::string& header, size_t n_cols);

}  // namespace kvd
