// Hand-written SVG plots (report_svg.h).
#include "diagnostics/report_svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace kvwire::diag {
namespace {

std::string Num(double v) {
  char b[32];
  std::snprintf(b, sizeof(b), "%.2f", v);
  return b;
}

std::string Sci(double v) {
  char b[32];
  std::snprintf(b, sizeof(b), "%.2g", v);
  return b;
}

// A perceptually ordered colour ramp (dark blue -> teal -> yellow) at t in [0, 1].
std::string Ramp(double t) {
  static const double stops[5][3] = {
      {68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  t = std::clamp(t, 0.0, 1.0) * 4.0;
  const int i = std::min(3, static_cast<int>(t));
  const double f = t - i;
  char b[16];
  const auto c = [&](int k) {
    return static_cast<int>(std::lround(stops[i][k] + f * (stops[i + 1][k] - stops[i][k])));
  };
  std::snprintf(b, sizeof(b), "#%02x%02x%02x", c(0), c(1), c(2));
  return b;
}

const char* kPalette[] = {"#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b",
                          "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#000000", "#aec7e8"};

std::string Text(double x, double y, std::string_view s, const char* anchor = "start",
                 int size = 12, const char* extra = "") {
  return "<text x=\"" + Num(x) + "\" y=\"" + Num(y) + "\" font-size=\"" + std::to_string(size) +
         "\" text-anchor=\"" + anchor + "\"" + extra + ">" + XmlEscape(s) + "</text>\n";
}

std::string Header(double w, double h) {
  return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
         "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"" +
         Num(w) + "\" height=\"" + Num(h) + "\" viewBox=\"0 0 " + Num(w) + " " + Num(h) +
         "\" font-family=\"sans-serif\">\n<rect x=\"0\" y=\"0\" width=\"" + Num(w) +
         "\" height=\"" + Num(h) + "\" fill=\"#ffffff\"/>\n";
}

}  // namespace

std::string XmlEscape(std::string_view s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&apos;"; break;
      default:
        // Control characters are not allowed in XML 1.0 text.
        if (static_cast<unsigned char>(c) < 0x20 && c != '\n' && c != '\t') {
          o += ' ';
        } else {
          o += c;
        }
    }
  }
  return o;
}

std::string HeatMapSvg(const HeatMap& m) {
  const size_t rows = m.row_labels.size(), cols = m.col_labels.size();
  const double cw = 72, ch = 20, left = 90, top = 56, legend_w = 150;
  const double w = left + cw * double(cols) + legend_w, h = top + ch * double(rows) + 40;
  auto value = [&](size_t r, size_t c) {
    const size_t i = r * cols + c;
    const double v = i < m.values.size() ? m.values[i] : std::numeric_limits<double>::quiet_NaN();
    if (!std::isfinite(v)) return std::numeric_limits<double>::quiet_NaN();
    if (m.log10) return v > 0 ? std::log10(v) : std::numeric_limits<double>::quiet_NaN();
    return v;
  };
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < cols; ++c) {
      const double v = value(r, c);
      if (std::isfinite(v)) {
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    }
  }
  if (!std::isfinite(lo)) lo = 0, hi = 1;
  if (hi - lo < 1e-12) hi = lo + 1;
  std::string s = Header(w, h);
  s += Text(w / 2, 22, m.title, "middle", 15, " font-weight=\"bold\"");
  for (size_t c = 0; c < cols; ++c) {
    s += Text(left + cw * (double(c) + 0.5), top - 8, m.col_labels[c], "middle");
  }
  for (size_t r = 0; r < rows; ++r) {
    const double y = top + ch * double(r);
    s += Text(left - 8, y + ch * 0.7, m.row_labels[r], "end");
    for (size_t c = 0; c < cols; ++c) {
      const double v = value(r, c);
      const double x = left + cw * double(c);
      const std::string fill = std::isfinite(v) ? Ramp((v - lo) / (hi - lo)) : "#eeeeee";
      s += "<rect x=\"" + Num(x) + "\" y=\"" + Num(y) + "\" width=\"" + Num(cw) + "\" height=\"" +
           Num(ch) + "\" fill=\"" + fill + "\" stroke=\"#ffffff\"/>\n";
      if (std::isfinite(v)) {
        const double t = (v - lo) / (hi - lo);
        const double raw = m.values[r * cols + c];
        s += Text(x + cw / 2, y + ch * 0.7, Sci(raw), "middle", 10,
                  t > 0.6 ? " fill=\"#000000\"" : " fill=\"#ffffff\"");
      }
    }
  }
  // Legend: a vertical gradient bar, max at the top.
  const double lx = left + cw * double(cols) + 30, ly = top, lh = std::max(ch * double(rows), 80.0);
  s += "<defs><linearGradient id=\"ramp\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">\n";
  for (int i = 0; i <= 4; ++i) {
    s += "<stop offset=\"" + Num(i / 4.0) + "\" stop-color=\"" + Ramp(i / 4.0) + "\"/>\n";
  }
  s += "</linearGradient></defs>\n";
  s += "<rect x=\"" + Num(lx) + "\" y=\"" + Num(ly) + "\" width=\"16\" height=\"" + Num(lh) +
       "\" fill=\"url(#ramp)\" stroke=\"#444444\"/>\n";
  s += Text(lx + 22, ly + 10, Num(hi), "start", 11);
  s += Text(lx + 22, ly + lh, Num(lo), "start", 11);
  s += Text(lx, ly + lh + 18, m.value_label, "start", 11);
  s += "</svg>\n";
  return s;
}

std::string XyPlotSvg(const XyPlot& p) {
  const double w = 820, h = 500, left = 80, right = 220, top = 44, bottom = 56;
  const double pw = w - left - right, ph = h - top - bottom;
  double x0 = 0, x1 = -std::numeric_limits<double>::infinity();
  double y0 = std::numeric_limits<double>::infinity(), y1 = -y0;
  auto yv = [&](double y) { return p.log_y ? std::log10(y) : y; };
  auto usable = [&](const std::pair<double, double>& pt) {
    return std::isfinite(pt.first) && std::isfinite(pt.second) && (!p.log_y || pt.second > 0);
  };
  for (const PlotSeries& se : p.series) {
    for (const auto& pt : se.points) {
      if (!usable(pt)) continue;
      x0 = std::min(x0, pt.first);
      x1 = std::max(x1, pt.first);
      y0 = std::min(y0, yv(pt.second));
      y1 = std::max(y1, yv(pt.second));
    }
  }
  if (!std::isfinite(x1) || x1 <= x0) x1 = x0 + 1;
  if (!std::isfinite(y0)) y0 = 0, y1 = 1;
  if (p.log_y) {
    y0 = std::floor(y0);
    y1 = std::ceil(y1);
  }
  if (y1 - y0 < 1e-12) y1 = y0 + 1;
  // x ticks at a round step giving 5-12 ticks.
  double step = 1;
  for (double c : {0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0}) {
    step = c;
    if ((x1 - x0) / c <= 12) break;
  }
  x1 = std::ceil(x1 / step) * step;
  auto X = [&](double x) { return left + (x - x0) / (x1 - x0) * pw; };
  auto Y = [&](double y) { return top + ph - (yv(y) - y0) / (y1 - y0) * ph; };
  auto Yr = [&](double yt) { return top + ph - (yt - y0) / (y1 - y0) * ph; };

  std::string s = Header(w, h);
  s += Text(left + pw / 2, 24, p.title, "middle", 15, " font-weight=\"bold\"");
  s += "<rect x=\"" + Num(left) + "\" y=\"" + Num(top) + "\" width=\"" + Num(pw) +
       "\" height=\"" + Num(ph) + "\" fill=\"none\" stroke=\"#444444\"/>\n";
  for (double x = x0; x <= x1 + 1e-9; x += step) {
    s += "<line x1=\"" + Num(X(x)) + "\" y1=\"" + Num(top) + "\" x2=\"" + Num(X(x)) +
         "\" y2=\"" + Num(top + ph) + "\" stroke=\"#e0e0e0\"/>\n";
    s += Text(X(x), top + ph + 16, Num(x), "middle", 11);
  }
  const double ystep = p.log_y ? 1.0 : (y1 - y0) / 5.0;
  for (double y = y0; y <= y1 + 1e-9; y += ystep) {
    s += "<line x1=\"" + Num(left) + "\" y1=\"" + Num(Yr(y)) + "\" x2=\"" + Num(left + pw) +
         "\" y2=\"" + Num(Yr(y)) + "\" stroke=\"#e0e0e0\"/>\n";
    const std::string label = p.log_y ? "1e" + std::to_string(static_cast<int>(std::lround(y)))
                                      : Sci(y);
    s += Text(left - 6, Yr(y) + 4, label, "end", 11);
  }
  s += Text(left + pw / 2, h - 14, p.x_label, "middle", 12);
  s += "<text x=\"18\" y=\"" + Num(top + ph / 2) +
       "\" font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 18 " +
       Num(top + ph / 2) + ")\">" + XmlEscape(p.y_label) + "</text>\n";
  for (size_t i = 0; i < p.series.size(); ++i) {
    const PlotSeries& se = p.series[i];
    const std::string color = kPalette[i % (sizeof(kPalette) / sizeof(kPalette[0]))];
    std::vector<std::pair<double, double>> pts;
    for (const auto& pt : se.points) {
      if (usable(pt)) pts.push_back(pt);
    }
    std::sort(pts.begin(), pts.end());
    if (se.line && pts.size() > 1) {
      s += "<polyline fill=\"none\" stroke=\"" + color + "\" stroke-width=\"1.8\" points=\"";
      for (const auto& pt : pts) s += Num(X(pt.first)) + "," + Num(Y(pt.second)) + " ";
      s += "\"/>\n";
    }
    for (const auto& pt : pts) {
      s += "<circle cx=\"" + Num(X(pt.first)) + "\" cy=\"" + Num(Y(pt.second)) +
           "\" r=\"3.5\" fill=\"" + color + "\"/>\n";
    }
    const double ly = top + 12 + 18 * double(i);
    s += "<line x1=\"" + Num(left + pw + 14) + "\" y1=\"" + Num(ly - 4) + "\" x2=\"" +
         Num(left + pw + 34) + "\" y2=\"" + Num(ly - 4) + "\" stroke=\"" + color +
         "\" stroke-width=\"2\"/>\n";
    s += "<circle cx=\"" + Num(left + pw + 24) + "\" cy=\"" + Num(ly - 4) + "\" r=\"3.5\" fill=\"" +
         color + "\"/>\n";
    s += Text(left + pw + 40, ly, se.name, "start", 11);
  }
  s += "</svg>\n";
  return s;
}

}  // namespace kvwire::diag
