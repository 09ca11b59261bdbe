// The grid's shape: columns and rows for `n` tiles, so that 1 to 25 (and more) stay usable.
// A wide window fits every tile without scrolling (a square-ish grid, each tile as large as the
// stage allows); a narrow one (a phone) shows one or two columns and scrolls. While a screen is
// shared the stage gives the share most of the room and the camera tiles become a strip.

// Below this width (CSS pixels) the window is narrow: see style.css's media query too.
export const NARROW_MAX_WIDTH = 640;

// [columns, rows] for `n` tiles in a window `width` wide.
export function gridShape(n, width) {
  const count = Math.max(1, n);
  let cols;
  if (width <= NARROW_MAX_WIDTH) cols = count <= 2 ? 1 : 2;
  else cols = Math.ceil(Math.sqrt(count));
  return [cols, Math.ceil(count / cols)];
}

// Sets the grid's CSS variables (--cols, --rows) and the stage's `sharing` class.
export function layoutGrid(grid, n, stage, screens = 0) {
  if (!grid) return;
  const [cols, rows] = gridShape(n, window.innerWidth);
  grid.style.setProperty("--cols", String(cols));
  grid.style.setProperty("--rows", String(rows));
  grid.dataset.count = String(n);
  stage?.classList.toggle("sharing", screens > 0);
}
