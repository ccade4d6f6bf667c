package bench

import (
	"bytes"
	"fmt"
	"image/color"
	"io"
	"os"
	"slices"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// AgainstReport is what `nodeagent bench --against kube-proxy` writes.
type AgainstReport struct {
	Commit  string `json:"commit"`
	Machine string `json:"machine"`
	Kernel  string `json:"kernel"`
	Date    string `json:"date"`
	// Against names the other implementation and its version.
	Against string `json:"against"`
	// Settings says how the run was made (writers, gap between changes, ...).
	Settings string          `json:"settings"`
	Results  []AgainstResult `json:"results"`
	Ratios   []AgainstRatio  `json:"ratios"`
}

// AgainstRatio is nodeagent's number divided by kube-proxy's for one (mode, size): below 1,
// nodeagent is faster or smaller. A ratio is 0 where kube-proxy's number is 0.
type AgainstRatio struct {
	Mode        string  `json:"mode"`
	Services    int     `json:"services"`
	FirstSync   float64 `json:"firstSync"`
	LastLag     float64 `json:"lastLag"`
	ChangeP50   float64 `json:"changeP50"`
	ChangeP99   float64 `json:"changeP99"`
	CPUSeconds  float64 `json:"cpuSeconds"`
	PeakRSS     float64 `json:"peakRss"`
	KernelObjs  float64 `json:"kernelObjects"`
	CPUCreate   float64 `json:"cpuCreate"`
	ChangesSeen int     `json:"changes"`
}

// Ratios pairs nodeagent's and kube-proxy's results of each (mode, size), in the order the
// pairs first appear.
func Ratios(rs []AgainstResult) []AgainstRatio {
	type key struct {
		mode string
		n    int
	}
	pairs := map[key][2]*AgainstResult{}
	var order []key
	for i := range rs {
		r := &rs[i]
		k := key{r.Mode, r.Services}
		p, ok := pairs[k]
		if !ok {
			order = append(order, k)
		}
		switch r.Impl {
		case ImplNodeagent:
			p[0] = r
		case ImplKubeProxy:
			p[1] = r
		}
		pairs[k] = p
	}
	div := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	var out []AgainstRatio
	for _, k := range order {
		p := pairs[k]
		na, kp := p[0], p[1]
		if na == nil || kp == nil {
			continue
		}
		out = append(out, AgainstRatio{Mode: k.mode, Services: k.n,
			FirstSync: div(na.FirstSyncMs, kp.FirstSyncMs), LastLag: div(na.LastLagMs, kp.LastLagMs),
			ChangeP50: div(na.ChangeP50Ms, kp.ChangeP50Ms), ChangeP99: div(na.ChangeP99Ms, kp.ChangeP99Ms),
			CPUSeconds: div(na.CPUSeconds, kp.CPUSeconds), CPUCreate: div(na.CPUCreateSecs, kp.CPUCreateSecs),
			PeakRSS: div(na.PeakRSSMB, kp.PeakRSSMB), KernelObjs: div(float64(na.KernelObjects), float64(kp.KernelObjects)),
			ChangesSeen: min(na.Changes, kp.Changes)})
	}
	return out
}

// WriteAgainstTable prints one row per (implementation, mode, size) as a Markdown table, each
// pair followed by the ratio nodeagent : kube-proxy.
func WriteAgainstTable(w io.Writer, rs []AgainstResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "| implementation\t mode\t services\t eps/svc\t API writes s\t last service in kernel s\t after last write ms\t changes\t change p50 ms\t change p99 ms\t API watch p50 ms\t CPU s (create)\t CPU s\t peak RSS MB\t kernel objects\t")
	fmt.Fprintln(tw, "| ---\t ---\t ---\t ---\t ---\t ---\t ---\t ---\t ---\t ---\t ---\t ---\t ---\t ---\t ---\t")
	ratios := Ratios(rs)
	for i, r := range rs {
		fmt.Fprintf(tw, "| %s\t %s\t %d\t %d\t %.1f\t %.1f\t %.0f\t %d\t %.1f\t %.1f\t %.1f\t %.1f\t %.1f\t %.0f\t %d\t\n",
			r.Impl, r.Mode, r.Services, r.EndpointsPerService, r.CreateMs/1000, r.FirstSyncMs/1000, r.LastLagMs,
			r.Changes, r.ChangeP50Ms, r.ChangeP99Ms, r.WatchP50Ms, r.CPUCreateSecs, r.CPUSeconds, r.PeakRSSMB, r.KernelObjects)
		if i+1 < len(rs) && rs[i+1].Mode == r.Mode && rs[i+1].Services == r.Services {
			continue
		}
		for _, q := range ratios {
			if q.Mode == r.Mode && q.Services == r.Services {
				fmt.Fprintf(tw, "| **nodeagent : kube-proxy**\t %s\t %d\t \t \t %.2f\t %.3f\t \t **%.3f**\t **%.3f**\t \t %.2f\t %.2f\t %.2f\t %.2f\t\n",
					q.Mode, q.Services, q.FirstSync, q.LastLag, q.ChangeP50, q.ChangeP99, q.CPUCreate, q.CPUSeconds, q.PeakRSS, q.KernelObjs)
			}
		}
	}
	_ = tw.Flush()
}

// WriteTrafficTable prints the traffic probe's latencies, one row per (mode, size) with both
// implementations side by side and kube-proxy's p90 over nodeagent's; nothing when no run probed
// traffic.
func WriteTrafficTable(w io.Writer, rs []AgainstResult) {
	type pair struct{ na, kp *AgainstResult }
	var rows []pair
	for i := range rs {
		r := &rs[i]
		if r.FirstEndpoint.Samples == 0 && r.Replaced.Samples == 0 {
			continue
		}
		k := slices.IndexFunc(rows, func(p pair) bool {
			o := p.na
			if o == nil {
				o = p.kp
			}
			return o.Mode == r.Mode && o.Services == r.Services
		})
		if k < 0 {
			rows = append(rows, pair{})
			k = len(rows) - 1
		}
		if r.Impl == ImplKubeProxy {
			rows[k].kp = r
		} else {
			rows[k].na = r
		}
	}
	if len(rows) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "| mode	 services	 case	 samples	 nodeagent p50 / p90 / max ms	 kube-proxy p50 / p90 / max ms	 p90 kube-proxy ÷ nodeagent	 stale answers (nodeagent / kube-proxy)	")
	fmt.Fprintln(tw, "| ---	 ---	 ---	 ---	 ---	 ---	 ---	 ---	")
	for _, p := range rows {
		for _, c := range []struct {
			name string
			get  func(*AgainstResult) Latencies
		}{
			{"first endpoint", func(r *AgainstResult) Latencies { return r.FirstEndpoint }},
			{"endpoint replaced", func(r *AgainstResult) Latencies { return r.Replaced }},
		} {
			var na, kp Latencies
			var mode string
			var services, naStale, kpStale int
			if p.na != nil {
				na, mode, services, naStale = c.get(p.na), p.na.Mode, p.na.Services, p.na.StaleAnswers
			}
			if p.kp != nil {
				kp, mode, services, kpStale = c.get(p.kp), p.kp.Mode, p.kp.Services, p.kp.StaleAnswers
			}
			fmt.Fprintf(tw, "| %s\t %d\t %s\t %d\t %s\t %s\t %s\t %d / %d\t\n", mode, services, c.name,
				max(na.Samples, kp.Samples), latencyText(na), latencyText(kp), speedup(kp.P90Ms, na.P90Ms), naStale, kpStale)
		}
	}
	_ = tw.Flush()
}

func latencyText(l Latencies) string {
	if l.Samples == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f / %.1f / %.1f", l.P50Ms, l.P90Ms, l.MaxMs)
}

// speedup is slow ÷ fast in bold, with a 1 ms floor under fast: the probe ticks every
// millisecond, so a 0 ms p90 means "within the first tick", not infinitely fast.
func speedup(slow, fast float64) string {
	if slow == 0 {
		return "–"
	}
	return fmt.Sprintf("**%.0f×**", slow/max(fast, 1))
}

// WriteAgainstFiles writes results.json, results.md and results.png into dir.
func WriteAgainstFiles(dir string, rep AgainstReport) error {
	rep.Ratios = Ratios(rep.Results)
	return writeFiles(dir, rep, func(w io.Writer) {
		fmt.Fprintf(w, "nodeagent against %s. Commit %s, %s, kernel %s, %s.\n\n%s\n\n", rep.Against, rep.Commit,
			rep.Machine, rep.Kernel, rep.Date, rep.Settings)
		WriteAgainstTable(w, rep.Results)
		var traffic bytes.Buffer
		WriteTrafficTable(&traffic, rep.Results)
		if traffic.Len() > 0 {
			fmt.Fprintf(w, "\n**Traffic** (from the API write's return to the first connection through the service "+
				"answered by the new endpoint, seen by a client polling every millisecond in the node's namespace):\n\n%s", traffic.Bytes())
		}
		var dp bytes.Buffer
		WriteDatapathTable(&dp, rep.Results)
		if dp.Len() > 0 {
			fmt.Fprintf(w, "\n**Datapath** (new TCP connections through one cluster IP at saturation, "+
				"from a load generator in the node's namespace; medians over the periods):\n\n%s", dp.Bytes())
		}
	}, func(path string) error { return plotAgainst(path, rep.Results) })
}

// plotAgainst draws, against the number of services, one line per (implementation, mode):
// change latency p50 and p99, the lag of the last created service, and CPU seconds.
func plotAgainst(path string, rs []AgainstResult) error {
	panels := []struct {
		title, unit string
		y           func(AgainstResult) float64
	}{
		{"endpoint change → kernel, p50", "ms", func(r AgainstResult) float64 { return r.ChangeP50Ms }},
		{"endpoint change → kernel, p99", "ms", func(r AgainstResult) float64 { return r.ChangeP99Ms }},
		{"last created service → kernel, after the last API write", "ms", func(r AgainstResult) float64 { return r.LastLagMs }},
		{"CPU time of the proxy over the run", "s", func(r AgainstResult) float64 { return r.CPUSeconds }},
	}
	type line struct{ impl, mode string }
	var lines []line
	for _, r := range rs {
		l := line{r.Impl, r.Mode}
		found := false
		for _, x := range lines {
			found = found || x == l
		}
		if !found {
			lines = append(lines, l)
		}
	}
	colors := map[string]color.Color{ImplNodeagent: color.RGBA{R: 200, G: 30, B: 30, A: 255}, ImplKubeProxy: color.RGBA{R: 30, G: 60, B: 200, A: 255}}
	var plots []*plot.Plot
	for _, pn := range panels {
		p := plot.New()
		p.Title.Text = pn.title
		p.X.Label.Text = "services"
		p.Y.Label.Text = pn.unit
		for _, l := range lines {
			var xys plotter.XYs
			for _, r := range rs {
				if r.Impl == l.impl && r.Mode == l.mode {
					xys = append(xys, plotter.XY{X: float64(r.Services), Y: pn.y(r)})
				}
			}
			lp, pts, err := plotter.NewLinePoints(xys)
			if err != nil {
				return err
			}
			c := colors[l.impl]
			lp.Color, pts.Color = c, c
			if l.mode == "nftables" {
				lp.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
				pts.Shape = draw.TriangleGlyph{}
			}
			p.Add(lp, pts)
			p.Legend.Add(l.impl+" "+l.mode, lp, pts)
		}
		p.Y.Min = 0 // ratios read honestly only from zero
		p.Legend.Top, p.Legend.Left = true, true
		plots = append(plots, p)
	}
	img := vgimg.New(vg.Points(1000), vg.Points(720))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 2, PadX: vg.Millimeter * 6, PadY: vg.Millimeter * 6,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	grid := [][]*plot.Plot{{plots[0], plots[1]}, {plots[2], plots[3]}}
	canvases := plot.Align(grid, tiles, dc)
	for i := range grid {
		for j := range grid[i] {
			grid[i][j].Draw(canvases[i][j])
		}
	}
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
