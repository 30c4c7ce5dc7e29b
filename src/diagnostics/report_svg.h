// Hand-written SVG plots for the `kvwire diagnose` report (no plotting dependency): a heat map
// (layer x bits sensitivity) and an x/y plot with a log-scale y axis (rate-distortion curves).
// Output is a standalone SVG 1.1 document; every text is XML-escaped.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kvwire::diag {

/// `s` with &, <, >, " and ' escaped for XML text and attributes.
std::string XmlEscape(std::string_view s);

struct HeatMap {
  std::string title;
  std::vector<std::string> row_labels;  // top to bottom
  std::vector<std::string> col_labels;  // left to right
  std::vector<double> values;           // [rows, cols] row-major; non-finite = blank cell
  std::string value_label;              // legend caption, e.g. "log10 KL (nats)"
  bool log10 = true;                    // color by log10(value) (values <= 0: blank)
};
std::string HeatMapSvg(const HeatMap& map);

struct PlotSeries {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y); y <= 0 is dropped on a log axis
  bool line = true;                               // connect the points (sorted by x)
};

struct XyPlot {
  std::string title, x_label, y_label;
  bool log_y = true;
  std::vector<PlotSeries> series;
};
std::string XyPlotSvg(const XyPlot& plot);

}  // namespace kvwire::diag
