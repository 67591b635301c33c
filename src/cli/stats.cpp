// kvdial stats FILE.csv: reads the CSV (errors name the file and line) and prints the report of
// eval/collect.h's csv_stats_report.
#include "cli/stats.h"

#include <cstdio>

#include "eval/collect.h"

namespace kvd::cli {

void add_stats_options(CLI::App* app, StatsArgs& a) {
  app->add_option("file", a.file, "CSV written by kvdial collect")->required();
}

int run_stats(const StatsArgs& a) {
  const CsvTable t = read_csv_table(a.file);
  std::fputs(csv_stats_report(t).c_str(), stdout);
  return 0;
}

}  // namespace kvd::cli
