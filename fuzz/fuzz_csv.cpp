// libFuzzer target for the CSV reader of kvdial stats / kvdial train: reads the input as a CSV table and,
// when it is accepted, looks up its columns and reads every value; also splits the input's first line as
// the resume check does. Only kvd::Error may escape read_csv_table; anything else is a bug.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>

#include "eval/csv.h"
#include "util/error.h"

namespace {
volatile double g_sink;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  double h = static_cast<double>(kvd::split_csv_line(text.substr(0, text.find('\n'))).size());
  try {
    std::istringstream in(text);
    const kvd::CsvTable t = kvd::read_csv_table(in, "fuzz.csv");
    h += static_cast<double>(t.rows() + t.split.size());
    for (const std::string& c : t.columns) h += t.column(c);
    for (const auto& col : t.values)
      for (double v : col) h += v;
    h += static_cast<double>(kvd::join_csv(t.columns).size());
  } catch (const kvd::Error&) {
  }
  g_sink = h;
  return 0;
}
