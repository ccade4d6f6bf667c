package bench

import (
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"slices"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Report is what a sweep writes: where it ran and what it found.
type Report struct {
	Commit  string   `json:"commit"`
	Machine string   `json:"machine"`
	Kernel  string   `json:"kernel"`
	Date    string   `json:"date"`
	Results []Result `json:"results"`
}

// WriteTable prints one row per (mode, services) as a Markdown table.
func WriteTable(w io.Writer, rs []Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "| mode\t services\t eps/svc\t first sync ms\t change p50 ms\t change p99 ms\t add p50 ms\t add p99 ms\t RSS MB\t kernel objects\t connect p50 µs\t connect p99 µs\t direct p50 µs\t")
	fmt.Fprintln(tw, "| ---\t ---\t ---\t ---\t ---\t ---\t ---\t ---\t ---\t ---\t ---\t ---\t ---\t")
	for _, r := range rs {
		fmt.Fprintf(tw, "| %s\t %d\t %d\t %.1f\t %.2f\t %.2f\t %.2f\t %.2f\t %.0f\t %d\t %.0f\t %.0f\t %.0f\t\n",
			r.Mode, r.Services, r.EndpointsPerService, r.FirstSyncMs, r.ChangeP50Ms, r.ChangeP99Ms,
			r.AddP50Ms, r.AddP99Ms, r.PeakRSSMB, r.KernelObjects, r.ConnectP50Us, r.ConnectP99Us, r.DirectP50Us)
	}
	_ = tw.Flush()
}

// WriteFiles writes results.json, results.md and results.png into dir.
func WriteFiles(dir string, rep Report) error {
	return writeFiles(dir, rep, func(w io.Writer) {
		fmt.Fprintf(w, "Commit %s, %s, kernel %s, %s.\n\n", rep.Commit, rep.Machine, rep.Kernel, rep.Date)
		WriteTable(w, rep.Results)
	}, func(path string) error { return plotResults(path, rep.Results) })
}

// writeFiles writes v as results.json, the text md writes as results.md and the plot as
// results.png into dir.
func writeFiles(dir string, v any, md func(io.Writer), plot func(path string) error) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "results.md"))
	if err != nil {
		return err
	}
	md(f)
	if err := f.Close(); err != nil {
		return err
	}
	return plot(filepath.Join(dir, "results.png"))
}

// plotResults draws change latency (p99) and connect latency (p50) against the number of
// services, one line per mode, side by side.
func plotResults(path string, rs []Result) error {
	var modes []string
	for _, r := range rs {
		if !slices.Contains(modes, r.Mode) {
			modes = append(modes, r.Mode)
		}
	}
	sync := plot.New()
	sync.Title.Text = "endpoint change → kernel, p99"
	sync.X.Label.Text = "services"
	sync.Y.Label.Text = "ms"
	conn := plot.New()
	conn.Title.Text = "TCP connect through a service, p50"
	conn.X.Label.Text = "services"
	conn.Y.Label.Text = "µs"
	palette := []color.Color{color.RGBA{R: 200, A: 255}, color.RGBA{B: 200, A: 255}, color.RGBA{G: 150, A: 255}, color.Gray{Y: 80}}
	for i, m := range modes {
		var sp, cp plotter.XYs
		for _, r := range rs {
			if r.Mode == m {
				sp = append(sp, plotter.XY{X: float64(r.Services), Y: r.ChangeP99Ms})
				cp = append(cp, plotter.XY{X: float64(r.Services), Y: r.ConnectP50Us})
			}
		}
		for _, pp := range []struct {
			p   *plot.Plot
			xys plotter.XYs
		}{{sync, sp}, {conn, cp}} {
			l, pts, err := plotter.NewLinePoints(pp.xys)
			if err != nil {
				return err
			}
			l.Color, pts.Color = palette[i%len(palette)], palette[i%len(palette)]
			pp.p.Add(l, pts)
			pp.p.Legend.Add(m, l, pts)
		}
	}
	sync.Legend.Top, conn.Legend.Top = true, true
	img := vgimg.New(vg.Points(900), vg.Points(360))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Millimeter * 6, PadY: vg.Millimeter * 2,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	plots := [][]*plot.Plot{{sync, conn}}
	canvases := plot.Align(plots, tiles, dc)
	sync.Draw(canvases[0][0])
	conn.Draw(canvases[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
