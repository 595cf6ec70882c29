fn main() {
    println!("dpumesh");
}
